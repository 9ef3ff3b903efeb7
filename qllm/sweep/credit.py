"""The credit functions a sweep's tfcaf presets train with: one per task, given or generated once.

A file the user gave is copied into ``artifacts/TASK.py``, so the sweep folder alone reproduces the
runs. A missing one is written by the coder-evaluator graph (:class:`qllm.agents.GenerationRun`) in
``artifacts/generate/TASK/``; an interrupted generation resumes from its own checkpoints. Generation
runs before any training starts: the local model needs the machine's cores to itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qllm.agents import GenerationRun, Models, RunStatus
from qllm.agents.context import GenerationSettings
from qllm.agents.run import SETTINGS_FILE, STATES_FILE, Listener
from qllm.sweep.plan import ARTIFACTS_DIR, SweepError, SweepPlan


def credit_file(sweep_dir: Path, task: str) -> Path:
    return sweep_dir / ARTIFACTS_DIR / f"{task}.py"


def generation_dir(sweep_dir: Path, task: str) -> Path:
    return sweep_dir / ARTIFACTS_DIR / "generate" / task


def prepare_credit_functions(
    sweep_dir: Path, plan: SweepPlan, models: Models | None = None, listener: Listener | None = None
) -> dict[str, Path]:
    """Task -> credit-function file, for every task when the plan has a tfcaf preset (else empty)."""
    if not plan.credit_presets:
        return {}
    files = {}
    for task in plan.tasks:
        target = credit_file(sweep_dir, task)
        if not target.is_file():
            source = plan.credit_files.get(task)
            written = Path(source) if source else _generate(sweep_dir, plan, task, models, listener)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(written, target)
        files[task] = target
    return files


def _generate(
    sweep_dir: Path, plan: SweepPlan, task: str, models: Models | None, listener: Listener | None
) -> Path:
    outcome = _open_or_create(sweep_dir, plan, task).execute(models=models, listener=listener)
    if outcome.status != RunStatus.SUCCEEDED or outcome.artifact is None:
        raise SweepError(
            f"no credit function for {task}: {outcome.reason} (trace: qllm trace show {outcome.run_dir}); "
            f"give one with --tfcaf {task}=FILE"
        )
    return outcome.artifact


def _open_or_create(sweep_dir: Path, plan: SweepPlan, task: str) -> GenerationRun:
    parent = generation_dir(sweep_dir, task)
    started = [
        d for d in sorted(parent.glob("*")) if (d / SETTINGS_FILE).is_file() and (d / STATES_FILE).is_file()
    ]
    if started:
        return GenerationRun.open(started[-1])
    return GenerationRun.create(GenerationSettings.from_dict({**plan.generation, "task": task}), parent)

"""Run a suite: one generation run per case and seed, scored and stored as it finishes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qllm.agents import GenerationRun, GenerationSettings, Models
from qllm.agents.modes import Mode, resolve_mode
from qllm.agents.selection import Selection
from qllm.envs.recording import load_recording
from qllm.envs.tasks import resolve_task
from qllm.evals.scorers import ProbeJudge, RunRecord, error_kinds, score_run
from qllm.evals.store import CaseResult, EvalRun, ResultsStore
from qllm.evals.suites import EvalCase, EvalSuite
from qllm.llm.providers import ModelSpec
from qllm.prompts import PromptLibrary
from qllm.sandbox import Sandbox, ValidationInputs

Progress = Callable[[EvalCase, int, CaseResult], None]


@dataclass(frozen=True)
class EvalModels:
    """Which models an eval run uses (the same settings as ``qllm generate``)."""

    coder: str = "local"
    evaluator: str = "local"
    coder_base_url: str | None = None
    evaluator_base_url: str | None = None
    prompt_version: str = "v1"
    mode: Mode = Mode.AUTO
    """``code``, ``spec`` or ``auto`` (see :mod:`qllm.agents.modes`)."""
    selection: Selection | None = None
    """How each round's best is chosen (:class:`~qllm.agents.selection.Selection`); ``None`` for the
    settings' default."""

    def resolved_mode(self) -> Mode:
        return resolve_mode(self.mode, ModelSpec.parse(self.coder, self.coder_base_url))


def score_generation_run(
    run_dir: Path, task: str, sandbox: Sandbox
) -> tuple[dict[str, float | None], RunRecord]:
    """The scores of one finished generation run folder."""
    record = RunRecord.load(run_dir)
    recorded = ValidationInputs.from_recording(load_recording(run_dir / "states.npz"))
    judge = ProbeJudge(sandbox, resolve_task(task).semantic_probes() or [], recorded)
    return score_run(record, judge), record


def rescore(eval_id: int, store: ResultsStore) -> EvalRun:
    """Score an eval run's generation run folders again with today's scorers (new scorers, fixed probes)."""
    evaluation = store.get(eval_id)
    with Sandbox() as sandbox:
        for result in evaluation.results:
            scores, record = score_generation_run(Path(result.run_dir), result.task, sandbox)
            result.scores, result.error_kinds = scores, error_kinds(record)
            store.update_scores(eval_id, result)
    return evaluation


def run_suite(
    suite: EvalSuite,
    models: EvalModels,
    store: ResultsStore,
    runs_dir: Path,
    *,
    label: str = "",
    chat_models: Callable[[EvalCase, int], Models] | None = None,
    on_result: Progress | None = None,
) -> EvalRun:
    """Every case x seed of ``suite``; results are stored as they come, so an interrupted eval keeps them.

    ``chat_models`` supplies chat models per run instead of building them from ``models`` (tests).
    """
    prompts = PromptLibrary(models.prompt_version)
    mode = models.resolved_mode()
    evaluation = EvalRun(
        label=label or f"{suite.name} {models.coder}/{models.evaluator} {mode} {models.prompt_version}",
        suite=suite.name, coder=models.coder, evaluator=models.evaluator,
        prompt_version=models.prompt_version, prompt_hashes=prompts.hashes(), mode=mode,
    )  # fmt: skip
    eval_id = store.start(evaluation)
    folder = runs_dir / f"eval-{eval_id}"
    with Sandbox() as sandbox:
        for case in suite.cases:
            for seed in case.seeds:
                settings = GenerationSettings(
                    task=case.task, seed=seed, candidates=case.candidates, rounds=case.rounds,
                    repairs=case.repairs, notes=case.notes, coder=models.coder, evaluator=models.evaluator,
                    coder_base_url=models.coder_base_url, evaluator_base_url=models.evaluator_base_url,
                    prompt_version=models.prompt_version, mode=mode,
                    **({"selection": models.selection} if models.selection else {}),
                )  # fmt: skip
                started = time.perf_counter()
                run = GenerationRun.create(settings, folder)
                outcome = run.execute(chat_models(case, seed) if chat_models else None)
                scores, record = score_generation_run(run.run_dir, case.task, sandbox)
                result = CaseResult(
                    task=case.task, seed=seed, unseen=case.unseen, status=outcome.status.value,
                    run_dir=str(run.run_dir), wall_s=round(time.perf_counter() - started, 1),
                    scores=scores, error_kinds=error_kinds(record),
                )  # fmt: skip
                store.add_result(eval_id, result)
                evaluation.results.append(result)
                if on_result is not None:
                    on_result(case, seed, result)
    return evaluation

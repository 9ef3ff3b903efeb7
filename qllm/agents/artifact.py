"""What a generation run leaves on disk: every assembled candidate, and the final TFCAF with metadata.

Run folder layout::

    settings.json        the settings the run was started with (resume reads them back)
    task_prompt.md       the generated task prompt
    states.npz           the recorded states candidates are validated on
    trace.jsonl          every LLM call, sandbox verdict, trial and decision (typed: qllm.agents.trace)
    checkpoints.sqlite   LangGraph checkpoints
    candidates/          r{round}-c{slot}-a{attempt}.py: every candidate that could be assembled
    trials/              when the run trains trials: each function trained (by its identity) and one
                         training run folder per function and seed (``qllm.agents.trial``)
    tfcaf.py             the chosen function, byte for byte the source that passed the sandbox
    artifact.json        its metadata: task, models, prompt version and hashes, template, state slices,
                         measured weights, the trials of the function and of equal weights, and where
                         it came from
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qllm.agents.context import GenerationContext
    from qllm.agents.state import Candidate, GenerationState

ARTIFACT_FILE = "tfcaf.py"
METADATA_FILE = "artifact.json"
CANDIDATES_DIR = "candidates"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_candidate(run_dir: Path, name: str, source: str) -> Path:
    folder = run_dir / CANDIDATES_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    _write_atomic(path, source)
    return path


def episode_weights(ctx: GenerationContext, source: str, episode: int = 0) -> dict[str, Any]:
    """The function's weights w_i(s) = dQ_tot/dQ_i at every state of one recorded episode.

    ``weights[t]`` is at state ``t`` (``t = 0`` the initial state, so one more than the steps) and
    ``rewards[t]`` the team reward of the step taken from state ``t``. They are computed in the sandbox:
    the numbers training uses (it computes a compiled credit spec's from the spec, bit for bit the same).
    """
    played = ctx.episode.episodes[episode : episode + 1]
    result = ctx.credit(source, played.visited_states())
    if not result.ok or result.credit is None:
        raise RuntimeError(f"the validated function failed on the recorded episode: {result.feedback()}")
    weights = result.credit.to_array()[:, : ctx.episode.info.n_agents]
    return {
        "episode": episode,
        "weights": [[round(float(w), 4) for w in row] for row in weights],
        "rewards": [round(float(r), 4) for r in played.reward[played.filled.bool()]],
    }


def _trials(state: GenerationState, best: Candidate) -> dict[str, Any] | None:
    """The chosen function's trials and the reference's, with the summary of each (None without trials)."""
    summary = state.trial_summary(best)
    reference = state.reference_summary()
    if summary is None or reference is None:
        return None
    return {
        "chosen": summary.model_dump(mode="json"),
        "reference": reference.model_dump(mode="json"),
        "beats_reference": summary.beats_reference,
        "runs": [
            t.model_dump(mode="json") for t in state.trials if t.subject in (best.subject, reference.subject)
        ],
    }


def write_artifact(ctx: GenerationContext, state: GenerationState, best: Candidate) -> Path:
    """Write ``tfcaf.py`` and ``artifact.json`` for ``best``, which must have passed the sandbox."""
    if not best.ok or not best.final.source:
        raise ValueError(
            f"refusing to write an artifact from candidate {best.id}, which did not pass validation"
        )
    metadata: dict[str, Any] = {
        "run_id": ctx.run_id,
        "task": ctx.spec.name,
        "candidate": best.id,
        "attempt": best.final.number,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "coder": str(ctx.coder.spec),
        "evaluator": str(ctx.evaluator.spec),
        "prompt_version": ctx.prompts.version,
        "prompt_hashes": ctx.prompts.hashes(),
        "template": ctx.mode.template_id,
        "mode": ctx.mode.name,
        "state_dim": ctx.named.info.state_dim,
        "n_agents": ctx.named.info.n_agents,
        "state_slices": ctx.named.slices(),
        "rounds_run": state.round - 1,
        "candidates_generated": len(state.candidates),
        "validation": best.final.result.model_dump(mode="json"),
        "written_code": best.final.code,
        "episode_weights": episode_weights(ctx, best.final.source),
        "credit_floor": ctx.settings.credit_floor,
        "selection": str(ctx.selection),
        "trials": _trials(state, best),
    }
    _write_atomic(ctx.run_dir / ARTIFACT_FILE, best.final.source)
    _write_atomic(ctx.run_dir / METADATA_FILE, json.dumps(metadata, indent=2) + "\n")
    return ctx.run_dir / ARTIFACT_FILE

"""Run settings (what a person configures) and the run-time context the graph's nodes work with.

Settings come from, in increasing priority: defaults, a TOML config file (``[generate]`` table),
environment variables (``QLLM_CODER``, ``QLLM_EVALUATOR``, ``QLLM_CODER_BASE_URL``,
``QLLM_EVALUATOR_BASE_URL``), and command-line flags. They are saved with every run, so a run can be
resumed or reproduced from its folder alone. The context holds what is not state and not checkpointed:
the models, the sandbox and the validation batch.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from langgraph.types import RetryPolicy

from qllm.agents.llm import ChatRole, LLMCaller, TransientLLMError
from qllm.agents.modes import Mode, WritingMode
from qllm.agents.selection import Selection
from qllm.agents.template import NamedState
from qllm.agents.trace import Trace
from qllm.agents.trial import TrialBench, TrialExecutorKind, TrialSettings
from qllm.envs.recording import Recording
from qllm.envs.tasks import TaskSpec
from qllm.files import read_toml
from qllm.prompts import PromptLibrary
from qllm.sandbox import CheckOptions, CreditResult, Sandbox, ValidationInputs, ValidationResult

ENV_VARS = {
    "coder": "QLLM_CODER",
    "evaluator": "QLLM_EVALUATOR",
    "coder_base_url": "QLLM_CODER_BASE_URL",
    "evaluator_base_url": "QLLM_EVALUATOR_BASE_URL",
}


class SettingsError(ValueError):
    """A config file or value that cannot be used."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that defines a generation run."""

    task: str
    """Task name (see ``qllm tasks list``)."""
    coder: str = "local"
    """Coder model: ``local`` or ``PROVIDER:MODEL`` (openai, deepseek, anthropic, ollama)."""
    evaluator: str = "local"
    """Evaluator model, in the same form; may differ from the coder."""
    coder_base_url: str | None = None
    """Endpoint of an OpenAI-compatible server for the coder."""
    evaluator_base_url: str | None = None
    """Endpoint of an OpenAI-compatible server for the evaluator."""
    candidates: int = 3
    """K: candidates drafted per round (the paper's default)."""
    rounds: int = 3
    """L: rounds of drafting and evaluation (the paper's default)."""
    repairs: int = 2
    """Repair attempts per candidate after a failed check."""
    early_stop: bool = True
    """End before L rounds when the evaluator is satisfied with a valid function."""
    coder_temperature: float = 0.7
    evaluator_temperature: float = 0.2
    max_tokens: int = 1024
    """Longest reply asked of either model."""
    timeout_s: float = 300.0
    """Longest one LLM call may take before it counts as a (retryable) timeout."""
    retry_attempts: int = 4
    """Tries per LLM call on transient faults (timeouts, 429, 5xx), the first included."""
    retry_initial_s: float = 2.0
    """Wait before the first retry; doubles each time."""
    record_episodes: int = 20
    """Episodes of a random policy recorded for validation states."""
    seed: int = 0
    monotonic: bool = True
    """Require non-negative weights (the IGM condition); the template guarantees it."""
    prompt_version: str = "v1"
    selection: Selection = Selection.AUTO
    """How each round's best candidate is chosen: ``evaluator`` (the evaluator LLM reads the candidates
    and gives tips), ``consensus`` (the candidate whose measured weights the others agree with most;
    no evaluator call, see :mod:`qllm.agents.selection`), ``trial`` (the best trial training, ties
    within the noise broken by ``auto``'s choice), or ``auto`` (consensus when the evaluator is the
    built-in local model, the evaluator otherwise)."""
    mode: Mode = Mode.AUTO
    """What the coder writes: ``code`` (``agent_weight``, in the template), ``spec`` (a credit spec we
    compile), ``function`` (the whole batched ``credit_assignment``), or ``auto`` (``spec`` for the
    built-in local model, ``code`` for every other provider); see :mod:`qllm.agents.modes`."""
    notes: str = ""
    """Free-text notes about the task appended to the task prompt (e.g. from ``--notes FILE``)."""
    credit_floor: float = 0.0
    """Every agent's weight is at least this fraction of the equal share (0: no floor; 1: equal weights,
    VDN). Keeps a credit function from starving an agent of gradient (see ``qllm.agents.template``)."""
    trial_steps: int | None = None
    """Environment steps each trial training takes (:mod:`qllm.agents.trial`); ``None``: the task
    family's default when the selection is ``trial``, no trials otherwise; 0: no trials."""
    trial_seeds: int = 1
    """Seeds each subject is trained with on trial (the same seeds for every subject). One is what
    ``benchmarks/learning_in_the_loop.py`` measured; with two or more, the noise a tie is judged by
    includes the seed-to-seed spread, not only the evaluation episodes', at that many times the cost."""
    trial_timeout_s: float = 900.0
    """Wall-clock seconds one trial may take before it ends as timed out."""
    trial_executor: TrialExecutorKind = TrialExecutorKind.RAY
    """Where trials train: ``ray`` (a local instance, or the cluster at ``trial_address``) or ``inline``."""
    trial_address: str | None = None
    """Address of a Ray cluster for the trials (``None``: a local instance)."""
    review: bool = False
    """Pause after every round for a person to accept the pick, pick another contender, edit the tips or
    stop (:mod:`qllm.agents.review`)."""

    def __post_init__(self) -> None:
        positive = ("candidates", "rounds", "retry_attempts", "record_episodes", "max_tokens", "trial_seeds")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, kind in (("selection", Selection), ("mode", Mode), ("trial_executor", TrialExecutorKind)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))  # a frozen field, typed once here
            except ValueError:
                choices = ", ".join(kind)
                raise SettingsError(f"{name} must be one of {choices}, got {getattr(self, name)!r}") from None
        if self.repairs < 0:
            raise SettingsError(f"repairs must be at least 0, got {self.repairs}")
        if not 0.0 <= self.credit_floor <= 1.0:
            raise SettingsError(f"credit_floor must be between 0 and 1, got {self.credit_floor}")
        if self.credit_floor and self.mode == Mode.FUNCTION:
            raise SettingsError("credit_floor is part of the template: mode function writes without one")
        if self.trial_steps is not None and self.trial_steps < 0:
            raise SettingsError(f"trial_steps must be at least 0, got {self.trial_steps}")
        if self.selection == Selection.TRIAL and self.trial_steps == 0:
            raise SettingsError("selection trial needs trials: give trial_steps above 0 (or leave it unset)")
        if self.trial_timeout_s <= 0:
            raise SettingsError(f"trial_timeout_s must be above 0, got {self.trial_timeout_s}")

    def trial_settings(self, task_trial_steps: int) -> TrialSettings | None:
        """How candidates are trained on trial, or ``None`` when this run trains none; under trial selection
        without ``trial_steps``, for the task's own budget (:attr:`~qllm.envs.tasks.TaskSpec.trial_steps`)."""
        steps = self.trial_steps
        if steps is None and self.selection == Selection.TRIAL:
            steps = task_trial_steps
        if not steps:
            return None
        seeds = tuple(self.seed + k for k in range(self.trial_seeds))
        return TrialSettings(task=self.task, steps=steps, seeds=seeds, timeout_s=self.trial_timeout_s)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SettingsError(f"unknown settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def resolve(
        cls,
        overrides: Mapping[str, Any],
        config_file: Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> GenerationSettings:
        """Defaults < config file ``[generate]`` < environment < ``overrides`` (``None`` values ignored)."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_read_config(config_file))
        values.update({name: environ[var] for name, var in ENV_VARS.items() if environ.get(var)})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


def _read_config(path: Path) -> dict[str, Any]:
    data = read_toml(path, "config file", SettingsError)
    table = data.get("generate", data)
    if not isinstance(table, dict):
        raise SettingsError(f"config file {path}: [generate] must be a table")
    return table


@dataclass
class GenerationContext:
    """What the nodes use besides the state: models, prompts, the task's named state and the sandbox."""

    settings: GenerationSettings
    spec: TaskSpec
    named: NamedState
    inputs: ValidationInputs
    """The real recorded states every candidate is validated on (the same for all)."""
    episode: Recording
    """The recording the inputs come from; its first episode is plotted with the final weights."""
    task_prompt: str
    contract_prompt: str
    """What the coder must write, with the named state fields: the same for every coder call of the run."""
    mode: WritingMode
    """How coder prompts are built and replies become code (``code`` or ``spec``)."""
    selection: Selection
    """``evaluator``, ``consensus`` or ``trial``: the settings' choice, with ``auto`` resolved."""
    judge: Selection
    """``evaluator`` or ``consensus``: who judges candidates by what they are (``auto``'s choice); under
    ``trial`` selection, it breaks ties within the noise."""
    trials: TrialBench | None
    """Trains candidates on trial, or ``None`` when this run trains none."""
    prompts: PromptLibrary
    coder: ChatRole
    evaluator: ChatRole
    llm: LLMCaller
    trace: Trace
    sandbox: Sandbox
    run_id: str
    run_dir: Path
    _sandbox_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def validate(self, source: str) -> ValidationResult:
        """Validate one assembled TFCAF in the sandbox (one job at a time: candidates run concurrently)."""
        options = CheckOptions(require_monotonic=self.settings.monotonic)
        with self._sandbox_lock:
            return self.sandbox.validate(source, self.inputs, options)

    def credit(self, source: str, states: torch.Tensor) -> CreditResult:
        """Each state's weights and bias under ``source``, computed in the sandbox (the same numbers as
        training's, which computes a compiled credit spec's from the spec)."""
        with self._sandbox_lock:
            return self.sandbox.credit(source, states, self.episode.info.n_agents, monotonic=False)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=self.settings.retry_initial_s,
            max_attempts=self.settings.retry_attempts,
            retry_on=TransientLLMError,
        )

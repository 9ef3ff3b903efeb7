"""Training configuration: one typed dataclass, and named presets that override a few of its fields.

The defaults are EPyMARL's QMIX settings (facts measured on these machines: Adam 5e-4, batch 32
episodes, buffer 5000, epsilon 1 -> 0.05 over 50k steps, hard target update every 200 episodes,
gamma 0.99, grad clip 10, hidden 64, mixing embed 32, hypernet 64, double Q). Presets are plain
objects: ``PRESETS["riit"]`` is the pymarl2 recipe, ``PRESETS["qllm"]`` the QLLM paper's RL settings,
``PRESETS["coma"]`` and ``PRESETS["maddpg"]`` EPyMARL's actor-critic baselines (``algo`` picks the
learner; the value-based presets all use ``algo="q"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from qllm.envs.tasks import DEFAULT_TASK


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the seed, the run is reproducible)."""

    task: str = DEFAULT_TASK
    """Task name (see ``qllm tasks list``)."""
    algo: Literal["q", "coma", "maddpg"] = "q"
    """Learner: q (value decomposition with ``mixer``), coma or maddpg (actor-critic, own critics)."""
    mixer: str = "qmix"
    """Mixer of the q learner: iql, vdn, qmix, qatten or tfcaf; "none" for the actor-critic learners."""
    preset: str = "qmix"
    """Name of the preset these settings started from (recorded for the report)."""
    seed: int = 0
    """Seeds networks, exploration and environment resets."""
    steps: int = 100_000
    """Training budget in environment steps (t_max)."""
    envs: int = 1
    """Environments stepped together in this process; one batched network forward per step."""
    tfcaf: str | None = None
    """Path of the credit-function file for the tfcaf mixer (validated in the sandbox before use, unless it
    is exactly qllm's compilation of the credit spec in its header: then its credit comes from the spec)."""
    tfcaf_monotonic: bool = True
    """Require the credit function's weights to be non-negative (IGM), as the paper's functions are."""
    credit_call_budget_s: float = 10.0
    """Wall-clock seconds one call of the credit function may take in training: computing the credit of
    a batch of new states in the sandbox, or mixing a batch in this process (functions not linear in Q).
    A call over budget stops training with an error instead of hanging it. (A compiled credit spec's credit
    is qllm's own arithmetic: no budget.)"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    threads: int = 1
    """CPU threads for each torch operation. One is fastest for these small networks (measured on 2
    cores), and several runs sharing a machine (sweeps) do not oversubscribe its cores: OpenMP threads
    spinning against another process's threads slowed training by more than 10x here. (Where the second
    core is free, the q learner also unrolls its target network on a second Python thread, beside the
    online one, each unroll with these threads: no spinning, and the same results.)"""
    collect_ahead: bool = True
    """Off-policy learners (q, maddpg): a second process collects the next batch of episodes while the
    learner updates on the last, acting with the weights from before that update (one update behind)
    instead of after it, so collection and update use two cores at once. False collects in line, one
    thing after the other, as EPyMARL does (and as qllm did before this setting existed: the same numbers
    bit for bit). Each batch is asked for before the update or once the update has unrolled its networks,
    whichever the run has timed to be faster (:class:`qllm.rl.collector.AskSchedule`; the same numbers
    either way). On-policy learners (coma) always collect in line. Where every core already runs a
    training (a sweep), it adds processes, not cores."""

    # exploration (epsilon-greedy, q learner only: the actor-critic learners sample from their policy)
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_steps: int = 50_000
    """Environment steps over which epsilon decays linearly."""

    # learning
    lr: float = 5e-4
    batch_size: int = 32
    """Episodes per update, sampled from replay. On-policy learners (coma) have no replay: they learn
    once from the ``envs`` episodes of each rollout."""
    buffer_size: int = 5000
    """Episodes kept in the replay buffer (off-policy learners)."""
    gamma: float = 0.99
    td_lambda: float = 0.0
    """TD(lambda) targets (q and coma); 0 gives one-step targets. maddpg is off-policy: always 0."""
    double_q: bool = True
    grad_clip: float = 10.0
    target_update: Literal["hard", "soft"] = "hard"
    target_update_interval: int = 200
    """Episodes between hard target updates."""
    tau: float = 0.01
    """Soft target update rate (per update)."""
    standardise_rewards: bool = False
    """Standardise rewards by their running mean and standard deviation before computing targets."""
    entropy_coef: float = 0.001
    """coma: weight of the policy-entropy bonus in the actor loss."""
    policy_reg: float = 0.001
    """maddpg: weight of the squared-logit penalty in the actor loss (keeps logits from diverging)."""

    # networks
    hidden_dim: int = 64
    """GRU width of the agent network (and hidden width of the coma/maddpg critics, as in EPyMARL)."""
    mixing_embed_dim: int = 32
    hypernet_embed: int = 64
    attention_heads: int = 4

    # evaluation, logging, checkpoints
    eval_interval: int = 10_000
    """Environment steps between greedy evaluations."""
    eval_episodes: int = 32
    log_interval: int = 2_000
    checkpoint_interval: int = 50_000
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried into the run's config file."""

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        # Runs saved before collection could run ahead collected in line: they continue the same way.
        return cls().replace(**{"collect_ahead": False, **data})


PRESETS: dict[str, dict[str, Any]] = {
    "iql": {"mixer": "iql"},
    "vdn": {"mixer": "vdn"},
    "qmix": {"mixer": "qmix"},
    "qatten": {"mixer": "qatten"},
    # pymarl2 (Hu et al., "Rethinking the implementation tricks..."): larger batches, TD(lambda), 8 envs.
    "riit": {
        "mixer": "qmix",
        "lr": 1e-3,
        "batch_size": 128,
        "td_lambda": 0.6,
        "envs": 8,
        "epsilon_anneal_steps": 100_000,
        "target_update_interval": 200,
    },
    # The QLLM authors' RL settings for the training-free credit function.
    "qllm": {
        "mixer": "tfcaf",
        "lr": 1e-3,
        "batch_size": 64,
        "envs": 8,
        "buffer_size": 5000,
        "epsilon_anneal_steps": 200_000,
        "target_update": "soft",
        "tau": 0.01,
        "hidden_dim": 128,
        "standardise_rewards": True,
    },
}
PRESETS["riit-qllm"] = {**PRESETS["riit"], "mixer": "tfcaf"}
# Actor-critic baselines with EPyMARL's settings (uoe-agents/epymarl src/config/algs/{coma,maddpg}.yaml,
# on top of its default.yaml: gamma 0.99, grad clip 10, Adam). Where this trainer counts differently,
# the values are converted; where it differs, the comment says so.
PRESETS["coma"] = {
    "algo": "coma",
    "mixer": "none",
    "lr": 3e-4,
    "envs": 10,  # batch_size_run 10 = batch_size 10: each update learns from one rollout of 10 episodes
    "batch_size": 10,
    "standardise_rewards": True,
    "entropy_coef": 0.001,
    # EPyMARL's critic uses 10-step returns; the COMA paper (Foerster et al. 2018) and pymarl's
    # coma.yaml use TD(lambda = 0.8), which the trainer already has.
    "td_lambda": 0.8,
    # target critic copied every 200 updates of 10 episodes: this trainer counts episodes
    "target_update_interval": 2000,
}
PRESETS["maddpg"] = {
    "algo": "maddpg",
    "mixer": "none",
    "lr": 5e-4,
    "batch_size": 32,
    "buffer_size": 50_000,  # episodes; the buffer's memory grows only with what is stored
    "hidden_dim": 128,
    "standardise_rewards": True,
    "policy_reg": 0.001,
    "target_update_interval": 200,  # hard copies every 200 episodes (soft tau 0.01 in older versions)
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The config of preset ``name`` with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return TrainConfig(preset=name).replace(**{**PRESETS[name], **overrides})

"""Episodes: the one type for padded multi-agent episodes, and the one loop that collects them.

``E`` episodes padded to the episode limit ``T``, with a ``filled`` mask (EPyMARL's episode batch):

=================  ========================  =========================================================
field              shape                     meaning
=================  ========================  =========================================================
``obs``            ``[E, T+1, n, O]`` f32    per-agent observations before each step and after the last
``state``          ``[E, T+1, S]`` f32       global state, aligned with ``obs``
``avail_actions``  ``[E, T+1, n, A]`` bool   actions available at each state
``actions``        ``[E, T, n]`` i64         joint action taken at step ``t``
``reward``         ``[E, T]`` f32            team reward of step ``t``
``terminated``     ``[E, T]`` f32            1.0 where step ``t`` ended the episode in a terminal state
``filled``         ``[E, T]`` f32            1.0 where step ``t`` happened (0.0 for padding)
``credit``         ``[E, T+1, C]`` f32       each state's credit under a credit function linear in Q
=================  ========================  =========================================================

Padding is zeros. :func:`rollout` fills them from environments stepped together, acting with any
policy: the trainer's runner drives it with the agent network, :func:`qllm.envs.recording.record`
with a random policy.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
import torch

from qllm.envs.contract import EnvInfo, MultiAgentEnv, TimeStep

Result = TypeVar("Result")

PER_STATE = frozenset({"obs", "state", "avail_actions", "credit"})
"""Fields with one entry per state (``T + 1``); the others have one per step (``T``)."""

JointPolicy = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
"""``(t, obs [E, n, O], avail_actions [E, n, A]) -> actions [E, n]``: every environment's joint action at
step ``t`` (environments whose episode has ended get one too; it is ignored)."""


@dataclass
class Episodes:
    """A batch of padded episodes (see the module docstring for shapes)."""

    obs: torch.Tensor
    state: torch.Tensor
    avail_actions: torch.Tensor
    actions: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    filled: torch.Tensor
    credit: torch.Tensor
    """Each state's ``[w_1..w_n, b]`` (``C = n + 1``, from a credit spec or the sandbox:
    :mod:`qllm.rl.credit`); ``C = 0`` when there is no credit function."""

    @classmethod
    def zeros(
        cls,
        episodes: int,
        info: EnvInfo,
        factory: Callable[..., torch.Tensor] = torch.zeros,
        credit_width: int = 0,
    ) -> Episodes:
        """All padding, shaped for ``info``'s task (uninitialised with ``factory=torch.empty``)."""
        limit, n = info.episode_limit, info.n_agents
        return cls(
            obs=factory(episodes, limit + 1, n, info.obs_dim),
            state=factory(episodes, limit + 1, info.state_dim),
            avail_actions=factory(episodes, limit + 1, n, info.n_actions, dtype=torch.bool),
            actions=factory(episodes, limit, n, dtype=torch.long),
            reward=factory(episodes, limit),
            terminated=factory(episodes, limit),
            filled=factory(episodes, limit),
            credit=factory(episodes, limit + 1, credit_width),
        )

    @classmethod
    def concat(cls, parts: Sequence[Episodes]) -> Episodes:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def to(self, device: torch.device) -> Episodes:
        return Episodes(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, index: torch.Tensor | slice) -> Episodes:
        return Episodes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def truncate(self, steps: int) -> Episodes:
        """Keep the first ``steps`` steps (and ``steps + 1`` states)."""
        return Episodes(
            **{
                f.name: getattr(self, f.name)[:, : steps + 1 if f.name in PER_STATE else steps]
                for f in fields(self)
            }
        )

    def trimmed(self) -> Episodes:
        """Without the trailing steps that no episode of the batch used (less to learn from)."""
        return self.truncate(int(self.filled.sum(0).nonzero().max()) + 1)

    @property
    def n_episodes(self) -> int:
        return self.filled.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Steps of each episode, ``[E]`` (long)."""
        return self.filled.sum(dim=1).long()

    @property
    def returns(self) -> torch.Tensor:
        """Team return of each episode, ``[E]``."""
        return (self.reward * self.filled).sum(dim=1)

    @property
    def state_mask(self) -> torch.Tensor:
        """``[E, T+1]`` bool: which entries of ``state`` are real (the initial state and one per step)."""
        return torch.cat([torch.ones_like(self.filled[:, :1]), self.filled], dim=1).bool()

    def visited_states(self) -> torch.Tensor:
        """Every real state, flattened over episodes and time: ``[N, S]``."""
        return self.state[self.state_mask]


def rollout(envs: Sequence[MultiAgentEnv], seeds: Sequence[int], act: JointPolicy) -> Episodes:
    """One episode per environment, reset with its seed and stepped together until every episode has
    ended; ``act`` chooses all environments' joint actions at each step."""
    return finish(rollout_steps(envs, seeds, act))


def rollout_steps(
    envs: Sequence[MultiAgentEnv], seeds: Sequence[int], act: JointPolicy
) -> Generator[None, None, Episodes]:
    """:func:`rollout` in slices: yields after the resets and after each step but the last, and returns
    the episodes, so that a process can do it between other work (the collector evaluates this way
    while it waits for its next batch: :mod:`qllm.rl.collector`)."""
    if len(seeds) != len(envs) or not envs:
        raise ValueError(f"need one seed per environment, got {len(seeds)} for {len(envs)}")
    info = envs[0].info
    episodes = Episodes.zeros(len(envs), info)
    data = {f.name: getattr(episodes, f.name).numpy() for f in fields(episodes)}  # views: writes fill it
    for e, (env, seed) in enumerate(zip(envs, seeds, strict=True)):
        _store_state(data, e, 0, env.reset(seed=seed))
    yield
    active = np.ones(len(envs), dtype=bool)
    for t in range(info.episode_limit):
        actions = act(t, data["obs"][:, t], data["avail_actions"][:, t])
        for e in np.flatnonzero(active):
            ts = envs[e].step(actions[e])
            data["actions"][e, t] = actions[e]
            data["reward"][e, t] = ts.reward
            data["terminated"][e, t] = ts.terminated
            data["filled"][e, t] = 1.0
            _store_state(data, e, t + 1, ts)
            active[e] = not ts.done
        if not active.any():
            break
        yield
    return episodes


def finish(steps: Generator[None, None, Result]) -> Result:
    """Run a generator of steps (:func:`rollout_steps`, say) to its end and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _store_state(data: dict[str, np.ndarray], e: int, t: int, ts: TimeStep) -> None:
    data["obs"][e, t] = ts.obs
    data["state"][e, t] = ts.state
    data["avail_actions"][e, t] = ts.avail_actions

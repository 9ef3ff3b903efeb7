"""Episode replay buffer: whole episodes padded to the episode limit, with a ``filled`` mask.

Layout as in :mod:`qllm.envs.recording` (``T`` = episode limit): per-state arrays have ``T + 1``
entries, per-step arrays ``T``. Storage is preallocated once; sampling returns only the time steps that
some sampled episode actually used, so short episodes cost less to learn from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from qllm.envs import EnvInfo


@dataclass
class EpisodeBatch:
    """A batch of padded episodes (``B`` episodes)."""

    obs: torch.Tensor
    """``[B, T+1, n, O]`` float."""
    state: torch.Tensor
    """``[B, T+1, S]`` float."""
    avail_actions: torch.Tensor
    """``[B, T+1, n, A]`` bool."""
    actions: torch.Tensor
    """``[B, T, n]`` long."""
    reward: torch.Tensor
    """``[B, T]`` float."""
    terminated: torch.Tensor
    """``[B, T]`` float (1.0 where the step ended the episode in a terminal state)."""
    filled: torch.Tensor
    """``[B, T]`` float (1.0 where the step happened)."""
    credit: torch.Tensor
    """``[B, T+1, C]`` float: each state's credit ``[w_1..w_n, b]`` under a credit function linear in Q
    (``C = n + 1``, computed in the sandbox, :mod:`qllm.rl.credit`); ``C = 0`` when training has none."""

    @classmethod
    def zeros(
        cls,
        episodes: int,
        info: EnvInfo,
        factory: Callable[..., torch.Tensor] = torch.zeros,
        credit_width: int = 0,
    ) -> EpisodeBatch:
        """An all-padding batch shaped for ``info``'s task (uninitialised with ``factory=torch.empty``)."""
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

    def to(self, device: torch.device) -> EpisodeBatch:
        return EpisodeBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, index: torch.Tensor | slice) -> EpisodeBatch:
        return EpisodeBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def truncate(self, steps: int) -> EpisodeBatch:
        """Keep the first ``steps`` steps (and ``steps + 1`` states)."""
        per_state = {"obs", "state", "avail_actions", "credit"}
        return EpisodeBatch(
            **{
                f.name: getattr(self, f.name)[:, : steps + 1 if f.name in per_state else steps]
                for f in fields(self)
            }
        )

    def trimmed(self) -> EpisodeBatch:
        """Without the trailing steps that no episode of the batch used (less to learn from)."""
        return self.truncate(int(self.filled.sum(0).nonzero().max()) + 1)


class ReplayBuffer:
    """A ring buffer of ``capacity`` episodes."""

    def __init__(self, capacity: int, info: EnvInfo, credit_width: int = 0) -> None:
        self.capacity = capacity
        # Uninitialised on purpose: every insert writes whole episodes (padding included), and untouched
        # pages cost no memory, so a 5000-episode RWARE buffer holds only what was collected so far.
        self.storage = EpisodeBatch.zeros(capacity, info, factory=torch.empty, credit_width=credit_width)
        self.size = 0
        self.position = 0

    def insert(self, batch: EpisodeBatch) -> None:
        for i in range(batch.filled.shape[0]):  # episode by episode: the ring may wrap inside a batch
            for f in fields(batch):
                getattr(self.storage, f.name)[self.position] = getattr(batch, f.name)[i]
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def sample(self, batch_size: int, generator: torch.Generator) -> EpisodeBatch:
        index = torch.randperm(self.size, generator=generator)[:batch_size]
        return self.storage[index].trimmed()

    def state_dict(self) -> dict[str, object]:
        stored = self.storage[slice(0, self.size)]
        return {
            "size": self.size,
            "position": self.position,
            **{f.name: getattr(stored, f.name) for f in fields(stored)},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.size, self.position = int(state["size"]), int(state["position"])
        for f in fields(self.storage):
            if f.name in state:  # checkpoints from before credit was stored have none (it is relabelled)
                getattr(self.storage, f.name)[: self.size] = state[f.name]

"""Episode replay buffer: whole episodes padded to the episode limit, with a ``filled`` mask.

Episodes are :class:`qllm.envs.episodes.Episodes` (``T`` = episode limit): per-state arrays have ``T + 1``
entries, per-step arrays ``T``. Storage is preallocated once; sampling returns only the time steps that
some sampled episode actually used, so short episodes cost less to learn from.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from qllm.envs import EnvInfo
from qllm.envs.episodes import Episodes


class ReplayBuffer:
    """A ring buffer of ``capacity`` episodes."""

    def __init__(self, capacity: int, info: EnvInfo, credit_width: int = 0) -> None:
        self.capacity = capacity
        # Uninitialised on purpose: every insert writes whole episodes (padding included), and untouched
        # pages cost no memory, so a 5000-episode RWARE buffer holds only what was collected so far.
        self.storage = Episodes.zeros(capacity, info, factory=torch.empty, credit_width=credit_width)
        self.size = 0
        self.position = 0

    def insert(self, batch: Episodes) -> None:
        for i in range(batch.filled.shape[0]):  # episode by episode: the ring may wrap inside a batch
            for f in fields(batch):
                getattr(self.storage, f.name)[self.position] = getattr(batch, f.name)[i]
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def sample(self, batch_size: int, generator: torch.Generator) -> Episodes:
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

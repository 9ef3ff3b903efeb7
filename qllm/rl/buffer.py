"""Episode replay buffer: whole episodes padded to the episode limit, with a ``filled`` mask.

Episodes are :class:`qllm.envs.episodes.Episodes` (``T`` = episode limit): per-state arrays have ``T + 1``
entries, per-step arrays ``T``. Storage is preallocated once; sampling returns only the time steps that
some sampled episode actually used, so short episodes cost less to learn from.
"""

from __future__ import annotations

from dataclasses import fields, replace

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

    def insert(self, batch: Episodes) -> torch.Tensor:
        """Store ``batch``'s episodes; returns the slots they went to. A batch without credit (``C = 0``) in
        a buffer that keeps credit leaves the new episodes' credit to :meth:`set_credit`."""
        later = batch.credit.shape[-1] == 0 < self.storage.credit.shape[-1]
        names = [f.name for f in fields(batch) if not (later and f.name == "credit")]
        slots = []
        for i in range(batch.filled.shape[0]):  # episode by episode: the ring may wrap inside a batch
            for name in names:
                getattr(self.storage, name)[self.position] = getattr(batch, name)[i]
            slots.append(self.position)
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
        return torch.tensor(slots)

    def set_credit(self, slots: torch.Tensor, credit: torch.Tensor) -> None:
        """The credit ``[len(slots), T + 1, C]`` of the episodes :meth:`insert` put in ``slots``."""
        for slot, episode_credit in zip(slots, credit, strict=True):  # in order: a slot may recur (a wrap)
            self.storage.credit[slot] = episode_credit

    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The slots of ``batch_size`` distinct stored episodes, at random."""
        return torch.randperm(self.size, generator=generator)[:batch_size]

    def gather(self, slots: torch.Tensor, with_credit: bool = True) -> Episodes:
        """The episodes in ``slots``, trimmed to the time steps they used; without their credit (``C = 0``)
        unless ``with_credit`` (that of episodes just inserted may not be set yet: :meth:`credit_of`)."""
        stored = self.storage if with_credit else replace(self.storage, credit=self.storage.credit[..., :0])
        return stored[slots].trimmed()

    def credit_of(self, slots: torch.Tensor, steps: int) -> torch.Tensor:
        """The credit ``[len(slots), steps + 1, C]`` of the episodes in ``slots``, over their first ``steps``
        steps (as :meth:`gather` trimmed them)."""
        return self.storage.credit[slots, : steps + 1]

    def sample(self, batch_size: int, generator: torch.Generator) -> Episodes:
        return self.gather(self.draw(batch_size, generator))

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

"""Machine-readable description of a task's global state.

Every task's global state is a flat float32 vector made of named *fields*. A field is a small table:
``count`` entities (rows, e.g. the agents) by ``features`` (columns, e.g. ``row, col``). The schema
records, for each field, where it lives in the flat vector, what it means and which values it takes.

The schema is the single source of truth in both directions: adapters *pack* their named values into
the flat state with :meth:`StateSchema.pack` (so a state can only be built in schema order), and
everything downstream (LLM prompts, generated credit functions, plots) reads fields back with
:meth:`StateSchema.view`. Tests compare those views against the simulators' own internals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class StateField:
    """One named block of the global state: ``count`` entities x ``len(features)`` features."""

    name: str
    """Identifier used in prompts and generated code, e.g. ``agent_position``."""
    entity: str
    """What one row is, e.g. ``agent`` or ``food``."""
    count: int
    """Number of rows (entities)."""
    features: tuple[str, ...]
    """Column names, e.g. ``("row", "col")``."""
    meaning: str
    """Plain-language description, including conventions such as the value of an eaten food."""
    low: float = -math.inf
    """Smallest value any entry can take (``-inf`` when unbounded)."""
    high: float = math.inf
    """Largest value any entry can take (``inf`` when unbounded)."""
    offset: int = 0
    """Index of the field's first entry in the flat state (set by :class:`StateSchema`)."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"state field name {self.name!r} is not a Python identifier")
        if self.count < 1 or not self.features:
            raise ValueError(f"state field {self.name!r} must have at least one entity and one feature")
        if self.low > self.high:
            raise ValueError(f"state field {self.name!r} has low {self.low} > high {self.high}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.count, len(self.features))

    @property
    def size(self) -> int:
        return self.count * len(self.features)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    def range_text(self) -> str:
        low = "-inf" if math.isinf(self.low) else f"{self.low:g}"
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return f"[{low}, {high}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entity": self.entity,
            "count": self.count,
            "features": list(self.features),
            "meaning": self.meaning,
            # JSON has no infinity: unbounded ends are written as null.
            "low": None if math.isinf(self.low) else self.low,
            "high": None if math.isinf(self.high) else self.high,
            "offset": self.offset,
            "slice": [self.slice.start, self.slice.stop],
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateField:
        return cls(
            name=data["name"],
            entity=data["entity"],
            count=int(data["count"]),
            features=tuple(data["features"]),
            meaning=data["meaning"],
            low=-math.inf if data.get("low") is None else float(data["low"]),
            high=math.inf if data.get("high") is None else float(data["high"]),
            offset=int(data.get("offset", 0)),
        )


@dataclass(frozen=True)
class StateSchema:
    """Ordered fields that tile the flat global state exactly, with no gaps or overlaps.

    Offsets are assigned here, in order, so a schema cannot describe overlapping or missing entries.
    """

    fields: tuple[StateField, ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a state schema needs at least one field")
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate state field names: {duplicates}")
        offsets = np.cumsum([0] + [f.size for f in self.fields[:-1]])
        placed = tuple(replace(f, offset=int(o)) for f, o in zip(self.fields, offsets, strict=True))
        object.__setattr__(self, "fields", placed)

    @cached_property
    def _by_name(self) -> dict[str, StateField]:
        return {f.name: f for f in self.fields}

    @property
    def size(self) -> int:
        """Length of the flat state vector."""
        return sum(f.size for f in self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def __iter__(self) -> Iterator[StateField]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, name: str) -> StateField:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no state field {name!r}; fields are {list(self.names)}") from None

    @cached_property
    def _slices(self) -> tuple[tuple[str, slice, tuple[int, int]], ...]:
        return tuple((f.name, f.slice, f.shape) for f in self.fields)

    def pack(
        self, values: Mapping[str, Any], out: np.ndarray | None = None, check: bool = True
    ) -> np.ndarray:
        """Build the flat float32 state from one array per field (each of the field's shape).

        ``check=False`` skips the checks of names and shapes (environments pack every step, and check
        only in debug mode: :data:`qllm.envs.contract.CHECKS`)."""
        if check:
            missing = set(self.names) - set(values)
            extra = set(values) - set(self.names)
            if missing or extra:
                raise ValueError(
                    f"state values do not match the schema: missing {missing}, unexpected {extra}"
                )
        state = np.empty(self.size, dtype=np.float32) if out is None else out
        for name, where, shape in self._slices:
            value = np.asarray(values[name], dtype=np.float32)
            if check and value.shape != shape:
                raise ValueError(f"state field {name!r} expects shape {shape}, got {value.shape}")
            state[where] = value.reshape(-1)
        return state

    def view(self, states: Array, name: str) -> Array:
        """Field ``name`` of a batch of flat states ``[..., size]`` as ``[..., count, n_features]``."""
        if states.shape[-1] != self.size:
            raise ValueError(f"states have last dimension {states.shape[-1]}, the schema has {self.size}")
        f = self[name]
        return states[..., f.slice].reshape(*states.shape[:-1], *f.shape)

    def unpack(self, states: Array) -> dict[str, Array]:
        """Every field of ``states`` by name (see :meth:`view`)."""
        return {name: self.view(states, name) for name in self.names}

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateSchema:
        schema = cls(tuple(StateField.from_dict(f) for f in data["fields"]))
        if "size" in data and data["size"] != schema.size:
            raise ValueError(f"schema declares size {data['size']} but its fields add up to {schema.size}")
        return schema

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StateSchema:
        return cls.from_dict(json.loads(text))

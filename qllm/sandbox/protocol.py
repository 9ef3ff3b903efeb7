"""The wire format between the host and a sandbox worker: length-prefixed JSON frames.

JSON only, in both directions: the host never unpickles anything that comes out of a sandbox, and
tensors travel as base64 of their raw float32 bytes.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np

SCRATCH_ENV = "QLLM_SCRATCH"
"""Colon-separated folders private to the worker, which it empties after every job (set by the backend)."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
FRAME_HEADER = struct.Struct(">I")
"""Every frame starts with its JSON payload's length in bytes."""


class ProtocolError(RuntimeError):
    """The other side sent something that is not a frame, or went away mid-frame."""


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return FRAME_HEADER.pack(len(payload)) + payload


def write_frame(stream: IO[bytes], message: dict[str, Any]) -> None:
    stream.write(encode_frame(message))
    stream.flush()


def read_frame(stream: IO[bytes]) -> dict[str, Any]:
    return receive_frame(lambda n: _read_exactly(stream, n))


def receive_frame(read_exactly: Callable[[int], bytes]) -> dict[str, Any]:
    """One frame, from a function that returns exactly ``n`` bytes or raises :class:`ProtocolError`."""
    (length,) = FRAME_HEADER.unpack(read_exactly(FRAME_HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        message = json.loads(read_exactly(length))
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    """``n`` bytes from ``stream``, buffered or raw (whose reads may return less than asked)."""
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise ProtocolError("the other side closed the stream")
        data += chunk
    return bytes(data)


def encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def decode_array(encoded: dict[str, Any]) -> np.ndarray:
    flat = np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.float32)
    return flat.reshape(encoded["shape"]).copy()


@dataclass(frozen=True)
class SandboxLimits:
    """Resource budget of one job; enforced by the worker on the process running the candidate."""

    wall_s: float = 10.0
    """Wall-clock seconds for loading the module and running every check."""
    cpu_s: int = 10
    """CPU seconds (RLIMIT_CPU); a backstop for the wall clock."""
    memory_mb: int = 1024
    """Address space the candidate may add on top of the worker's own (RLIMIT_AS)."""
    output_bytes: int = 64 * 1024
    """What the candidate may print, and what the process may write to stdout/stderr."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

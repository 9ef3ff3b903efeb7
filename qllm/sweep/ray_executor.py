"""Run jobs (a sweep's training runs, a generation's trials) on Ray: a local instance by default, or a
cluster given by its address.

Each job is one Ray task holding one CPU (training uses one torch thread), so a local instance trains
as many runs at once as the machine has cores. Jobs report their progress to a small actor that the
driver polls. On a cluster, the sweep folder must be on a file system every node mounts at the same
path: workers read credit functions from it and write their run folders into it.

A local instance advertises the loopback address and sends no usage statistics. Ray's own servers
still listen on every interface (with Ray's token authentication, on by default since 2.5x): run
sweeps on machines whose ports are not open to strangers.
"""

from __future__ import annotations

import os
from typing import Any

from qllm.sweep.execute import Job

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray at import: never phone home
import ray

LOCAL_OBJECT_STORE_BYTES = 100 * 1024**2
"""Runs exchange only small records: the default (30% of memory) would reserve RAM for nothing."""


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Environment steps done per run in progress, written by the workers, read by the driver."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def report(self, name: str, steps: int) -> None:
        self.steps[name] = steps

    def clear(self, name: str) -> None:
        self.steps.pop(name, None)

    def snapshot(self) -> dict[str, int]:
        return dict(self.steps)


@ray.remote(num_cpus=1, max_retries=0)  # retries are the sweep's decision (it resumes from checkpoints)
def _run_remote(job: Job[Any], board: Any) -> Any:
    return job.run(board.report.remote)


class RayExecutor:
    """Submits each job as a Ray task; ``address=None`` starts a local instance with ``workers`` CPUs."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            options |= {
                "num_cpus": workers or os.cpu_count() or 1,
                "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                "_node_ip_address": "127.0.0.1",
            }
        ray.init(address=address, **options)
        self.board = ProgressBoard.remote()
        self.pending: dict[ray.ObjectRef, Job[Any]] = {}

    def submit(self, job: Job[Any]) -> None:
        self.pending[_run_remote.remote(job, self.board)] = job

    def wait(self, timeout: float) -> list[tuple[Any, Any]]:
        if not self.pending:
            return []
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        ended = []
        for ref in ready:
            job = self.pending.pop(ref)
            ended.append((job, self._record(ref, job)))
            self.board.clear.remote(job.name)
        return ended

    @staticmethod
    def _record(ref: ray.ObjectRef, job: Job[Any]) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died (out of memory, killed, node lost)
            return job.failure(f"{type(exc).__name__}: {exc}")

    def progress(self) -> dict[str, int]:
        return ray.get(self.board.snapshot.remote())

    def close(self) -> None:
        ray.shutdown()

"""Validation latency per candidate credit function: each sandbox backend against no isolation at all.

For every available backend among gvisor, bwrap, unshare, process and docker (unavailable ones are skipped,
and said so), two ways of validating a candidate are timed on the host, around the whole ``validate`` call:

- cold: a new ``Sandbox(backend, warm=False)`` per candidate, so each time includes starting the worker
  (and the isolation around it) and its ``import torch``; under gVisor, a copy of a saved worker
  resumes instead unless ``QLLM_SANDBOX_SNAPSHOTS=0`` is set (``qllm/sandbox/snapshots.py``: the
  figures of 2026-12-03 are fresh starts);
- warm: one ``Sandbox(backend, warm=True)``; the first call (which starts the worker) is a warm-up and is
  excluded; each timed call still runs its candidate in a child of its own. Warm calls come in bursts
  of ``--burst`` candidates back to back, and are timed at each of ``--gaps-ms``, the pause before each
  burst: with bursts of 1, a gap of 0 is every candidate back to back (the worker has no time to fork
  and warm children ahead), and a pause longer than that preparation is candidates one at a time; bursts
  of K with a pause are how the generation graph sends them (its K candidates checked back to back,
  then the LLM's next turn, seconds).

The backends take turns, burst by burst (cold: one new sandbox of each in turn; warm: one warm sandbox
of each, open side by side, called in turn), so that a busy moment of the machine falls on all of them
alike. The reference is the same work in this process with no isolation: ``load_credit_function`` followed by
``run_checks``, timed the same way as warm (one warm-up call, then the repeats). Four realistic candidates
(VDN, a state-dependent softmax mixer, an LBF level-weighted mixer, and a credit spec compiled by qllm's
template, what the built-in model's generations write) are cycled through, and every one must pass.
Each row gives median and p90 ms per candidate and ``ratio`` = its median / the in-process median; then
warm gVisor against warm bubblewrap at each gap (the target: at most 2x). Peak RSS of this process is
printed last (the workers' memory is not included).

Run:  .venv/bin/python benchmarks/sandbox_latency.py [--backends gvisor,bwrap] [--gaps-ms 0,500] [--burst 3]
      [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qllm.envs.recording import record
from qllm.sandbox import CheckOptions, Sandbox, SandboxUnavailableError, ValidationInputs, ValidationResult
from qllm.sandbox.backends import detect_backend
from qllm.sandbox.checks import run_checks
from qllm.sandbox.restricted import candidate_traceback, load_credit_function

VDN = """\
def credit_assignment(agents_q, state):
    return agents_q.sum(dim=1, keepdim=True)
"""
SOFTMAX = """\
import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    positions = state[:, : 2 * n].reshape(-1, n, 2)
    feature = positions.norm(dim=-1) / 10.0
    weights = torch.softmax(feature, dim=1) * n
    return (weights * agents_q).sum(dim=1, keepdim=True)
"""
LBF = """\
import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    levels = state[:, 2 * n : 3 * n]  # agent levels: columns 6:9 with 3 agents
    last_action = state[:, -6 * n :].reshape(-1, n, 6)
    loading = last_action[:, :, 5]  # LOAD at the previous step
    weights = levels * (1.0 + 0.5 * loading)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6) * n
    return (weights * agents_q).sum(dim=1, keepdim=True)
"""
BACKEND_ORDER = "gvisor,bwrap,unshare,process,docker"
GVISOR_TARGET = 2.0
"""Warm gVisor may cost at most this many times warm bubblewrap per candidate."""
Runner = Callable[[str], ValidationResult]
"""Validates one candidate source."""


def spec_candidate(task: str) -> str:
    """What ``qllm generate`` writes with the built-in local model (spec mode): a credit spec compiled by
    qllm's template, a Python loop over the states, here one on the agents' distance to the nearest
    entity of their task (every family has one but the matrix games)."""
    from qllm.agents.spec import CreditSpec, per_agent_quantities, spec_file
    from qllm.agents.template import NamedState
    from qllm.envs import make_env

    named = NamedState.for_task(make_env(task).info)
    quantities = per_agent_quantities(named)
    distances = [q.name for q in quantities if q.name.endswith("_distance")]
    term = {
        "quantity": (distances or [quantities[0].name])[0],
        "more_credit_to": "lowest",
        "strength": "moderate",
    }
    spec = CreditSpec.model_validate({"reasoning": "a fixed spec for timing", "terms": [term]})
    return spec_file(named, spec)


def candidates_for(task: str) -> dict[str, str]:
    """The candidates cycled through, by name: hand-written tensor functions (the LBF mixer only on LBF
    tasks) and a template-compiled credit spec."""
    lbf = {"LBF levels": LBF} if task.startswith("lbf") else {}
    return {"VDN": VDN, "softmax": SOFTMAX, **lbf, "credit spec": spec_candidate(task)}


def check(result: ValidationResult, source: str, where: str) -> None:
    assert result.ok, f"{where}: candidate failed: {result.message}\n{result.traceback}\n{source}"


def in_process(source: str, inputs: ValidationInputs) -> ValidationResult:
    """The same checks with no isolation at all: restricted load and ``run_checks`` in this process."""
    fn = load_credit_function(source).function
    return run_checks(
        fn, inputs.agents_q, inputs.states, CheckOptions(), lambda e: candidate_traceback(e, source)
    )


def timed_in_turn(
    calls: dict[str, Runner], sources: list[str], repeats: int, gap_s: float = 0.0, burst: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each runner, the runners taking turns, burst by burst, on the same ``repeats``
    candidates (cycled from ``sources``): ``gap_s`` before each burst of ``burst`` calls back to back
    (so that what one sandbox does between bursts, forking and warming children ahead, is done before
    another is timed); each must pass."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for first in range(0, repeats, burst):
        for name, call in calls.items():
            time.sleep(gap_s)
            for i in range(first, min(first + burst, repeats)):
                source = sources[i % len(sources)]
                start = time.perf_counter()
                result = call(source)
                samples[name].append(time.perf_counter() - start)
                check(result, source, name)
    return samples


def bench_cold(backends: list[str], sources: list[str], inputs: ValidationInputs, repeats: int) -> dict:
    def cold(backend: str) -> Runner:
        def call(source: str) -> ValidationResult:
            with Sandbox(backend=backend, warm=False) as sandbox:
                return sandbox.validate(source, inputs)

        return call

    return timed_in_turn({b: cold(b) for b in backends}, sources, repeats)


def bench_warm(
    backends: list[str],
    sources: list[str],
    inputs: ValidationInputs,
    repeats: int,
    *,
    gaps_s: list[float],
    burst: int,
) -> dict[float, dict[str, list[float]]]:
    """Per gap, the seconds per call of each backend's warm sandbox (the same sandboxes for every gap)."""
    with contextlib.ExitStack() as stack:
        calls: dict[str, Runner] = {}
        for backend in backends:
            sandbox = stack.enter_context(Sandbox(backend=backend, warm=True))
            check(sandbox.validate(sources[-1], inputs), sources[-1], f"{backend} warm-up")
            calls[backend] = lambda s, box=sandbox: box.validate(s, inputs)
        return {gap: timed_in_turn(calls, sources, repeats, gap, burst) for gap in gaps_s}


def bench_reference(sources: list[str], inputs: ValidationInputs, repeats: int) -> list[float]:
    check(in_process(sources[-1], inputs), sources[-1], "in-process warm-up")
    return timed_in_turn({"in-process": lambda s: in_process(s, inputs)}, sources, repeats)["in-process"]


def row(backend: str, mode: str, samples: list[float]) -> dict[str, Any]:
    ms = np.array(samples) * 1e3
    median, p90 = float(np.median(ms)), float(np.percentile(ms, 90))
    return {"backend": backend, "mode": mode, "n": len(samples), "median_ms": median, "p90_ms": p90}


def per_candidate_medians(samples: list[float], n_candidates: int) -> list[float]:
    """Median ms of each candidate's calls (call ``i`` validated candidate ``i % n_candidates``)."""
    return [float(np.median(samples[k::n_candidates])) * 1e3 for k in range(n_candidates)]


def warm_mode(gap_s: float, burst: int) -> str:
    if burst == 1:
        return "warm, back to back" if gap_s == 0 else f"warm, {gap_s * 1000:g} ms apart"
    return f"warm, bursts of {burst}" + ("" if gap_s == 0 else f" {gap_s * 1000:g} ms apart")


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = ("backend", "mode", "n", "median_ms", "p90_ms", "ratio")
    header = tuple(c.replace("_", " ") for c in cells)
    lines = [tuple(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cells) for r in rows]
    widths = [max(len(line[c]) for line in [header, *lines]) for c in range(len(header))]
    for k, line in enumerate([header, *lines]):
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(padded))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--task", default="lbf-2s-10x10-3p-3f", help="task to record states in (default: %(default)s)")
    add("--states", type=int, default=256, help="validation batch size B (default: %(default)s)")
    add("--cold-repeats", type=int, default=5, help="cold candidates per backend (default: %(default)s)")
    add("--warm-repeats", type=int, default=30, help="timed warm candidates (default: %(default)s)")
    add("--backends", default=BACKEND_ORDER, help="comma-separated backends (default: %(default)s)")
    add(
        "--gaps-ms",
        default="0,500",
        help="pauses before each burst of warm calls, comma-separated ms (default: %(default)s)",
    )
    add("--burst", type=int, default=1, help="warm calls back to back after each pause (default: 1)")
    add("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    candidates = candidates_for(args.task)
    sources = list(candidates.values())
    inputs = ValidationInputs.from_recording(record(args.task, episodes=20), max_states=args.states)
    print(f"{args.task}: {inputs.states.shape[0]} states, {len(sources)} candidates cycled", flush=True)
    reference_samples = bench_reference(sources, inputs, args.warm_repeats)
    reference = row("in-process", "warm", reference_samples)
    backends, skipped = [], []
    for name in (b.strip() for b in args.backends.split(",") if b.strip()):
        try:
            detect_backend(name)
            backends.append(name)
        except SandboxUnavailableError as exc:
            print(f"skipping {name}: {exc}", flush=True)
            skipped.append(name)
    gaps_s = [float(gap) / 1000 for gap in args.gaps_ms.split(",") if gap.strip()]
    cold = bench_cold(backends, sources, inputs, args.cold_repeats)
    warm = bench_warm(backends, sources, inputs, args.warm_repeats, gaps_s=gaps_s, burst=args.burst)
    rows = [reference]
    for name in backends:
        rows.append(row(name, "cold", cold[name]))
        rows += [row(name, warm_mode(gap, args.burst), warm[gap][name]) for gap in gaps_s]
    for r in rows:
        r["ratio"] = r["median_ms"] / reference["median_ms"]
    print()
    print_table(rows)
    print("\nwarm medians per candidate, ms (" + ", ".join(candidates) + "):")
    width = max(len(warm_mode(gap, args.burst)) for gap in gaps_s)
    for name in ("in-process", *backends):
        for gap in [0.0] if name == "in-process" else gaps_s:
            samples = reference_samples if name == "in-process" else warm[gap][name]
            medians = per_candidate_medians(samples, len(sources))
            mode = "warm" if name == "in-process" else warm_mode(gap, args.burst)
            print(f"  {name:<10} {mode:<{width}} " + "  ".join(f"{m:7.2f}" for m in medians))
    if {"gvisor", "bwrap"} <= set(backends):
        print()
        for gap in gaps_s:
            ratio = float(np.median(warm[gap]["gvisor"]) / np.median(warm[gap]["bwrap"]))
            verdict = "met" if ratio <= GVISOR_TARGET else "NOT met"
            each = zip(
                per_candidate_medians(warm[gap]["gvisor"], len(sources)),
                per_candidate_medians(warm[gap]["bwrap"], len(sources)),
                strict=True,
            )
            ratios = ", ".join(f"{name} {g / b:.2f}x" for name, (g, b) in zip(candidates, each, strict=True))
            print(
                f"{warm_mode(gap, args.burst)}: gvisor / bwrap {ratio:.2f}x per candidate "
                f"(target at most {GVISOR_TARGET:g}x: {verdict}); by candidate: {ratios}"
            )
    rss = peak_rss_mib()
    print(f"\npeak RSS: {rss:.1f} MiB (this process only)")
    if args.json is not None:
        meta = {
            "task": args.task,
            "states": int(inputs.states.shape[0]),
            "candidates": len(sources),
            "gaps_ms": [gap * 1000 for gap in gaps_s],
            "burst": args.burst,
        }
        payload = {**meta, "skipped": skipped, "peak_rss_mib": rss, "results": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

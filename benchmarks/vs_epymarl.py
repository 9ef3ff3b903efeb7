"""Head-to-head training speed and peak memory: EPyMARL's QMIX against `qllm train`, as whole processes.

Both sides train on LBF 8x8-2p-2f (lbforaging ``Foraging-8x8-2p-2f-v3``, 50-step episodes) for
``--steps`` env steps, each run a fresh process started by this script, the two sides alternating
(each side leads in turn) so that drifts of the machine hit both alike.
Wall time runs from the start of the process to its exit (imports, start-up, tests and exit
included); env steps/s is ``--steps`` / wall (qllm's "Done: N steps" line is recorded beside it;
EPyMARL's loop ``while t_env <= t_max`` ends up to one batch of episodes past ``t_max``, <= 50
steps on schedule a, <= 400 on b, which it does not print). Memory is sampled from /proc over the
whole process tree (EPyMARL's parallel runner forks one worker per env): the peak of the summed RSS
(top's RES column added up: pages shared after a fork count once per process; every ``--interval`` s),
the peak of the summed PSS (shared pages split between the processes that map them; every
``--pss-interval`` s, as reading it is costly: ``TreePeaks``) and the largest single-process ru_maxrss
of the tree (from wait4); EPyMARL's tree also holds the two ``tee`` processes of sacred's fd capture (a
few MB). The CPU time the sampling took (on the machine the runs share) is printed per run. Linux only.
Both sides train with one torch thread (EPyMARL's main.py sets it; it is qllm's default).

Schedules (the same seed on both sides within a repeat):
  a  1 env: EPyMARL ``--config=qmix --env-config=gymma`` with its defaults (episode runner, batch of
     32 episodes) and ``t_max=STEPS test_interval=10000 test_nepisode=32``; qllm ``--mixer qmix``
     with its defaults (1 env, batch 32, 32-episode greedy test every 10k steps).
  b  8 envs: EPyMARL as in a plus ``runner=parallel batch_size_run=8``; qllm ``--mixer riit``
     (QMIX with 8 envs) and ``--mixer qllm`` (the qllm preset: 8 envs, a credit function
     that qllm's template compiles from a fixed credit spec, as `qllm generate` writes it, with the
     spec in its header: qllm computes its per-state credit from the spec; qllm versions before the
     spec-read header, as ``--qllm-before``, compute it in the sandbox); ``--b-mixers`` picks among them.

Before the timed runs, each qllm side whose preset may compute credit in the sandbox trains once for
``WARM_UP_STEPS`` steps, untimed: the first sandbox worker of a qllm version on a machine is saved for
later ones to resume (gVisor: about 10 s, once), and a cold cache would land that in one timed run only.
Its wall time is printed as the one-time cost it is.

The ratios depend on the machine: the script prints its CPU and the instruction set torch's kernels
use on it (``torch.backends.cpu.get_cpu_capability()``), and writes both into the JSON.
EPyMARL runs with ``use_cuda=False save_model=False`` and ``local_results_path`` in a temp folder;
its sacred FileStorageObserver writes to EPYMARL/results/sacred/ whatever the options, so the run
folder each run adds there is removed after it (EPyMARL's ``_sources`` folder is left).

EPyMARL is the public repository uoe-agents/epymarl, unmodified. Its ``src/envs/__init__.py``
imports its smaclite wrapper, which imports ``smaclite`` unconditionally; this script puts a stub
folder holding an empty ``smaclite`` package first on EPyMARL's PYTHONPATH, so a checkout runs LBF
without installing smaclite (nothing of smaclite is used for gymma). Set up once, e.g.:
  git clone https://github.com/uoe-agents/epymarl /work/epymarl   (or export an archive, then write
      its commit into /work/epymarl/EPYMARL_COMMIT, which this script prints if present)
  python3.11 -m venv /work/epymarl/.venv
  /work/epymarl/.venv/bin/pip install torch==2.13.0 numpy==2.4.6 gymnasium==1.4.0 lbforaging==2.0.0 \\
      sacred pyyaml 'setuptools>=77.0.3,<81'
(torch 2.13 needs setuptools >= 77.0.3; sacred 0.8 imports pkg_resources, gone from recent setuptools,
whose own warning says to pin < 81.) Tried at EPyMARL commit cbc38c09588064eab978501d0f12c2cf58fa7fc2.

Run:  .venv/bin/python benchmarks/vs_epymarl.py --epymarl /work/epymarl [--steps 50000] [--repeats 2]
      [--schedules a,b] [--b-mixers riit,qllm] [--qllm-before OTHER/bin/qllm] [--json out.json]
``--qllm-before`` adds an earlier qllm (say, a checkout of the previous commit with its own venv, or a
wrapper script that runs it) whose presets take their turns with the rest: before and after, measured
in the same session.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LBF_KEY = "lbforaging:Foraging-8x8-2p-2f-v3"
QLLM_TASK = "lbf-8x8-2p-2f"
EPYMARL = "epymarl"
CREDIT_SPEC = {
    "reasoning": "agents next to food that load matter",
    "terms": [
        {"quantity": "nearest_food_distance", "more_credit_to": "lowest", "strength": "strong"},
        {"quantity": "last_action[LOAD]", "more_credit_to": "highest", "strength": "moderate"},
    ],
}
"""The credit function of the qllm preset: a credit spec compiled by qllm's template, as `qllm generate`
writes it with the local model (no LLM call here)."""
EPYMARL_PARALLEL = ["runner=parallel", "batch_size_run=8"]


def epymarl_command(python: Path, schedule: str, steps: int, seed: int, results: Path) -> list[str]:
    """EPyMARL's QMIX on LBF 8x8-2p-2f; run from EPYMARL/src."""
    return [
        str(python), "main.py", "--config=qmix", "--env-config=gymma", "with",
        f"env_args.key={LBF_KEY}", "env_args.time_limit=50", f"t_max={steps}", "test_interval=10000",
        "test_nepisode=32", "use_cuda=False", "save_model=False", f"local_results_path={results}",
        f"seed={seed}", *(EPYMARL_PARALLEL if schedule == "b" else []),
    ]  # fmt: skip


BEFORE = "before-"
"""Prefix of the sides run with ``--qllm-before`` (an earlier qllm), beside the same presets of ``--qllm``."""


def sides(schedule: str, args: argparse.Namespace) -> list[str]:
    """EPyMARL, then each qllm preset measured against it on ``schedule`` (and, with ``--qllm-before``,
    the same preset of the earlier qllm)."""
    mixers = ["qmix"] if schedule == "a" else args.b_mixers
    before = [f"{BEFORE}{m}" for m in mixers] if args.qllm_before else []
    return [EPYMARL, *(f"qllm-{m}" for m in mixers), *before]


WARM_UP_STEPS = 2000
SANDBOX_PRESETS = frozenset({"qllm"})
"""qllm presets whose runs may compute credit in the sandbox (and so start its worker): an earlier qllm
(``--qllm-before``) computes the qllm preset's there; this one computes it from the file's credit spec."""


def qllm_command(qllm: Path, mixer: str, steps: int, seed: int, *, runs: Path, tfcaf: Path) -> list[str]:
    """`qllm train` with the preset's defaults."""
    command = [str(qllm), "train", "--task", QLLM_TASK, "--mixer", mixer, "--steps", str(steps)]
    command += ["--seed", str(seed), "--runs-dir", str(runs)]
    return command + (["--tfcaf", str(tfcaf)] if mixer == "qllm" else [])


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, from /proc/PID/stat."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children, tree = children_by_parent(), [root]
    for pid in tree:
        tree.extend(children.get(pid, ()))
    return tree


def field_kb(path: Path, name: str) -> int:
    """A ``Name:  N kB`` line of /proc/PID/status or smaps_rollup; 0 once the process is gone."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kb(pid: int) -> int:
    """A process's resident set (/proc/PID/statm's second field, top's RES); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class TreePeaks:
    """The peaks of one process tree's memory, sampled while it runs.

    The summed RSS is read at every tick (``statm``: microseconds). The summed PSS is read every
    ``pss_interval`` seconds: ``smaps_rollup`` makes the kernel walk every mapping of the process, about
    5 ms for a torch-sized one. Read at every 0.1 s tick, it took a quarter to a third of a core during an
    EPyMARL (b) run (11 processes: 9-13 CPU s of 34-44 s) and 13-15% during a qllm one, on the same two
    cores the runs use (reports/training-speed/sampling_cost.py).
    """

    root: int
    pss_interval: float
    rss_kb: int = 0
    pss_kb: int = 0
    processes: int = 0
    last_pss: float = -math.inf

    def sample(self, now: float) -> None:
        tree = process_tree(self.root)
        self.processes = max(self.processes, len(tree))
        self.rss_kb = max(self.rss_kb, sum(rss_kb(pid) for pid in tree))
        if now - self.last_pss >= self.pss_interval:
            self.last_pss = now
            self.pss_kb = max(
                self.pss_kb, sum(field_kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss") for pid in tree)
            )


def run_measured(
    command: list[str],
    cwd: Path,
    env: dict,
    logs: Path,
    *,
    interval: float,
    pss_interval: float,
    timeout: float,
) -> dict:
    """Run one process to its exit, sampling its tree's memory; wall time from start to exit, and the CPU
    time this script spent sampling meanwhile (on the same cores)."""
    with (logs / "stdout.txt").open("w") as out, (logs / "stderr.txt").open("w") as err:
        start, sampling = time.perf_counter(), time.process_time()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        peaks = TreePeaks(proc.pid, pss_interval)
        try:
            while True:
                peaks.sample(time.perf_counter())
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(interval)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall, sampling = time.perf_counter() - start, time.process_time() - sampling
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode, "wall_s": wall, "tree_rss_mb": peaks.rss_kb / 1024,
        "tree_pss_mb": peaks.pss_kb / 1024, "max_proc_mb": usage.ru_maxrss / 1024,
        "processes": peaks.processes, "sampling_cpu_s": sampling,
    }  # fmt: skip


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def sacred_runs(epymarl: Path) -> set[Path]:
    """EPyMARL's sacred run folders for QMIX on this task (it writes them under its own results/)."""
    folder = epymarl / "results" / "sacred" / "qmix" / LBF_KEY
    return {p for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def qllm_mixer(side: str) -> str:
    """The preset a qllm side trains (``qllm-riit`` and ``before-riit``: ``riit``)."""
    return side.removeprefix(BEFORE).removeprefix("qllm-")


def measure(
    side: str, schedule: str, seed: int, args: argparse.Namespace, tmp: Path, *, steps: int | None = None
) -> dict:
    """One run of one side (``steps``: default ``--steps``): a fresh process; exits with its stderr tail
    if it fails."""
    steps = args.steps if steps is None else steps
    work = tmp / f"{schedule}-{side}-{seed}-{steps}"
    work.mkdir()
    env = dict(os.environ)
    if side == EPYMARL:
        command = epymarl_command(args.epymarl_python, schedule, steps, seed, work / "results")
        cwd, before = args.epymarl / "src", sacred_runs(args.epymarl)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "stub"), env.get("PYTHONPATH")]))
    else:
        qllm = args.qllm_before if side.startswith(BEFORE) else args.qllm
        command = qllm_command(
            qllm, qllm_mixer(side), steps, seed, runs=work / "runs", tfcaf=tmp / "tfcaf.py"
        )
        cwd, before = work, set()
    row = {"schedule": schedule, "side": side, "seed": seed, "command": command}
    row |= run_measured(
        command, cwd, env, work, interval=args.interval, pss_interval=args.pss_interval, timeout=args.timeout
    )
    if side == EPYMARL:
        for folder in sacred_runs(args.epymarl) - before:
            shutil.rmtree(folder, ignore_errors=True)
    if row["rc"] != 0:
        print(f"\n{side} failed (exit {row['rc']}): {' '.join(command)}\n--- stderr tail ---")
        print(tail(work / "stderr.txt") or tail(work / "stdout.txt"))
        raise SystemExit(1)
    done = re.search(r"Done: (\d+) steps", (work / "stdout.txt").read_text(errors="replace"))
    row["steps_done"] = int(done.group(1)) if done else None
    row["steps_per_s"] = steps / row["wall_s"]
    return row


def warm_up(names: list[str], schedule: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """One short untimed run of each side whose preset starts a sandbox worker; their wall times."""
    spent = {}
    for side in names:
        if side != EPYMARL and qllm_mixer(side) in SANDBOX_PRESETS:
            spent[side] = measure(side, schedule, 0, args, tmp, steps=WARM_UP_STEPS)["wall_s"]
            print(
                f"warm-up  {side:12s} {spent[side]:8.1f} s for {WARM_UP_STEPS} steps (not timed)", flush=True
            )
    return spent


def summarize(rows: list[dict], names: list[str]) -> dict:
    """Medians per side, and per qllm side the ratios: speed = EPyMARL wall / qllm wall, memory = qllm
    peak / EPyMARL peak."""
    medians = {
        side: {
            key: statistics.median(r[key] for r in rows if r["side"] == side)
            for key in ("wall_s", "steps_per_s", "tree_rss_mb", "tree_pss_mb", "max_proc_mb")
        }
        for side in names
    }
    epymarl = medians[EPYMARL]
    ratios = {
        side: {
            "speed_ratio": epymarl["wall_s"] / m["wall_s"],
            "rss_ratio": m["tree_rss_mb"] / epymarl["tree_rss_mb"],
            "pss_ratio": m["tree_pss_mb"] / epymarl["tree_pss_mb"],
        }
        for side, m in medians.items()
        if side != EPYMARL
    }
    return {"medians": medians, "ratios": ratios}


def format_row(label: str, side: str, r: dict) -> str:
    return (
        f"{label:8s} {side:12s} {r['wall_s']:8.1f} {r['steps_per_s']:8.0f} {r['tree_rss_mb']:8.0f}"
        f" {r['tree_pss_mb']:8.0f} {r['max_proc_mb']:9.0f}"
    )


def print_schedule(schedule: str, rows: list[dict], summary: dict) -> None:
    print(f"\nschedule {schedule}: EPyMARL qmix vs qllm, {QLLM_TASK}")
    print(
        f"{'run':8s} {'side':12s} {'wall s':>8s} {'steps/s':>8s} {'RSS MB':>8s} {'PSS MB':>8s}"
        f" {'proc MB':>9s}"
    )
    for r in rows:
        done = f"  ({r['steps_done']} steps done)" if r["steps_done"] else ""
        sampling = f"  sampling {r['sampling_cpu_s']:.1f} CPU s" if "sampling_cpu_s" in r else ""
        print(format_row(f"{r['repeat']}", r["side"], r) + f"  {r['processes']} proc{done}{sampling}")
    for side, medians in summary["medians"].items():
        print(format_row("median", side, medians))
    for side, ratio in summary["ratios"].items():
        print(
            f"{side} x EPyMARL: speed {ratio['speed_ratio']:.2f} (EPyMARL wall / qllm wall); memory "
            f"{ratio['rss_ratio']:.2f} (tree RSS), {ratio['pss_ratio']:.2f} (PSS) (qllm / EPyMARL)"
        )
    medians = summary["medians"]
    for side in medians:
        earlier = medians.get(BEFORE + side.removeprefix("qllm-")) if side.startswith("qllm-") else None
        if earlier:
            print(f"{side} after / before: speed {earlier['wall_s'] / medians[side]['wall_s']:.2f}")


def epymarl_commit(epymarl: Path) -> str:
    """The EPYMARL_COMMIT file written when the checkout is an exported archive, else git's HEAD."""
    if (epymarl / "EPYMARL_COMMIT").is_file():
        return (epymarl / "EPYMARL_COMMIT").read_text().strip()
    out = subprocess.run(
        ["git", "-C", str(epymarl), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def torch_build(python: Path) -> str:
    """torch's version and the instruction set its CPU kernels use on this machine (AVX2, AVX512...)."""
    code = "import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def prepare(tmp: Path) -> None:
    """The empty smaclite stub for EPyMARL's PYTHONPATH and the credit function for the qllm preset."""
    from qllm.agents.spec import CreditSpec, spec_file
    from qllm.agents.template import NamedState
    from qllm.envs import make_env

    (tmp / "stub" / "smaclite").mkdir(parents=True)
    (tmp / "stub" / "smaclite" / "__init__.py").write_text("")
    named = NamedState.for_task(make_env(QLLM_TASK).info)
    (tmp / "tfcaf.py").write_text(spec_file(named, CreditSpec.model_validate(CREDIT_SPEC)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epymarl", type=Path, required=True, help="EPyMARL checkout (holding src/).")
    parser.add_argument("--epymarl-python", type=Path, help="default: EPYMARL/.venv/bin/python")
    parser.add_argument("--qllm", type=Path, default=REPO / ".venv" / "bin" / "qllm")
    parser.add_argument(
        "--qllm-before",
        type=Path,
        help="an earlier qllm's executable (a python beside it): its presets alternate with the others",
    )
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--schedules", default="a,b")
    parser.add_argument("--b-mixers", default="riit,qllm", help="qllm's presets on b (riit, qllm).")
    parser.add_argument("--interval", type=float, default=0.1, help="RSS sampling period, seconds")
    parser.add_argument(
        "--pss-interval", type=float, default=2.0, help="PSS sampling period, seconds (costly: see TreePeaks)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.epymarl = args.epymarl.resolve()
    args.epymarl_python = args.epymarl_python or args.epymarl / ".venv" / "bin" / "python"
    schedules = args.schedules.split(",")
    if not set(schedules) <= {"a", "b"}:
        parser.error("--schedules takes a, b or a,b")
    args.schedules = schedules
    args.b_mixers = args.b_mixers.split(",")
    if not set(args.b_mixers) <= {"riit", "qllm"}:
        parser.error("--b-mixers takes riit, qllm or riit,qllm")
    return args


def main() -> None:
    args = parse_args()
    print(f"EPyMARL {args.epymarl} at commit {epymarl_commit(args.epymarl)}")
    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_epymarl": torch_build(args.epymarl_python),
        "torch_qllm": torch_build(args.qllm.parent / "python"),
    }
    if args.qllm_before:
        machine["torch_qllm_before"] = torch_build(args.qllm_before.parent / "python")
    print(f"torch: EPyMARL {machine['torch_epymarl']}; qllm {machine['torch_qllm']}")
    print(
        f"{args.steps} env steps per run, {args.repeats} repeat(s), {machine['cpus']} CPUs: {machine['cpu']}"
    )
    report = {
        "epymarl_commit": epymarl_commit(args.epymarl),
        "steps": args.steps,
        "machine": machine,
        "schedules": {},
    }
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        prepare(tmp)
        for schedule in args.schedules:
            rows, names = [], sides(schedule, args)
            warm_ups = warm_up(names, schedule, args, tmp)
            for repeat in range(1, args.repeats + 1):
                shift = (repeat - 1) % len(names)  # each side leads in turn
                for side in names[shift:] + names[:shift]:
                    row = measure(side, schedule, repeat, args, tmp) | {"repeat": repeat}
                    print(format_row(f"{schedule}{repeat}", side, row), flush=True)
                    rows.append(row)
            summary = summarize(rows, names)
            print_schedule(schedule, rows, summary)
            report["schedules"][schedule] = {"runs": rows, "summary": summary, "warm_up_s": warm_ups}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The template's credit floor, measured: does keeping every agent's weight above a floor help a team learn?

The spec template compiles ``exp(sum_k ±strength_k z_k)``; with two strong terms the weight ratio between
agents reaches e^4 and more, so one agent's Q-values get almost no gradient (the "lazy agent" problem).
``credit_floor`` keeps each agent's weight at least that fraction of the equal share. Here one fixed,
typical spec (the local model's usual reading of foraging: more credit to the agent nearest food and to
the higher-level one, both strong) is compiled at each floor, its weight range measured in the sandbox on
recorded states, and each is trained with the graph's trial machinery beside equal weights (VDN): the
same seeds, the same RL settings (``qllm.agents.trial``), only the floor differs.

Run:  .venv/bin/python benchmarks/credit_floor.py [--task lbf-8x8-2p-2f] [--floors 0,0.25,0.5]
          [--steps 20000] [--seeds 3] [--out runs/bench/credit-floor] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qllm.agents.spec import CreditSpec, CreditTerm, compile_spec, per_agent_quantities
from qllm.agents.template import NamedState, assemble, keep_definitions
from qllm.agents.trial import (
    REFERENCE,
    TrialBench,
    TrialExecutorKind,
    TrialSettings,
    function_identity,
    summarise,
)
from qllm.envs.recording import record
from qllm.sandbox import CheckOptions, Sandbox, ValidationInputs

SPEC = CreditSpec(
    reasoning="The agent nearest food and the higher-level agent decide whether food is loaded.",
    terms=[
        CreditTerm(quantity="nearest_food_distance", more_credit_to="lowest", strength="strong"),
        CreditTerm(quantity="agent_level", more_credit_to="highest", strength="strong"),
    ],
)


class Journal:
    """Trials kept in memory only: every trial here is trained fresh."""

    def __init__(self) -> None:
        self.trials: dict[str, Any] = {}

    def record_trial(self, trial: Any) -> None:
        self.trials[trial.key] = trial

    def recorded_trial(self, key: str) -> Any:
        return self.trials.get(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="lbf-8x8-2p-2f")
    parser.add_argument("--floors", default="0,0.25,0.5")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/credit-floor"))
    parser.add_argument("--executor", default="ray", choices=[k.value for k in TrialExecutorKind])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    recording = record(args.task, 20, seed=0)
    named = NamedState.for_task(recording.info)
    written = keep_definitions(compile_spec(SPEC, per_agent_quantities(named)))
    inputs = ValidationInputs.from_recording(recording, seed=0)
    sources: dict[float, str] = {}
    ranges: dict[float, tuple[float, float]] = {}
    with Sandbox() as sandbox:
        for floor in (float(f) for f in args.floors.split(",")):
            source = assemble(named, written, credit_floor=floor)
            result = sandbox.validate(source, inputs, CheckOptions(require_monotonic=True))
            if not result.ok or result.weights is None:
                raise SystemExit(f"floor {floor}: {result.feedback()}")
            agents = result.weights.agents
            sources[floor] = source
            ranges[floor] = (min(a.min for a in agents), max(a.max for a in agents))

    settings = TrialSettings(task=args.task, steps=args.steps, seeds=tuple(range(args.seeds)), timeout_s=3600)
    bench = TrialBench(settings, args.out, Journal(), TrialExecutorKind(args.executor))
    subjects: dict[str, str | None] = {REFERENCE: None}
    subjects |= {function_identity(source): source for source in sources.values()}
    try:
        trials = bench.run(subjects)
    finally:
        bench.close()

    rows = []
    reference = summarise(trials, REFERENCE)
    print(f"{args.task}, {args.steps} steps x {args.seeds} seeds (the same for every subject)")
    print(f"{'subject':<22} {'weights min..max':>17} {'mean return':>12} {'vs equal weights':>22}")
    if reference.fitness is None:
        raise SystemExit(f"equal weights did not finish its trials: {reference.problem}")
    print(f"{'equal weights (VDN)':<22} {'1.00..1.00':>17} {reference.fitness:>12.3f}")
    for floor, source in sources.items():
        summary = summarise(trials, function_identity(source))
        d = summary.vs_reference
        low, high = ranges[floor]
        versus = f"{d.mean:+.3f} ± {d.noise:.3f} {d.verdict()}" if d else f"did not finish: {summary.problem}"
        fitness = f"{summary.fitness:.3f}" if summary.fitness is not None else "-"
        print(f"{'floor ' + str(floor):<22} {f'{low:.3f}..{high:.3f}':>17} {fitness:>12} {versus:>22}")
        rows.append({"floor": floor, "weights": [low, high], "summary": summary.model_dump(mode="json")})
    if args.json:
        payload = {"task": args.task, "steps": args.steps, "seeds": args.seeds, "spec": SPEC.model_dump(),
                   "reference": reference.model_dump(mode="json"), "floors": rows,
                   "trials": [t.model_dump(mode="json") for t in trials]}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

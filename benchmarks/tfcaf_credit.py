"""Training with a template-made credit function, its credit from its spec or from the sandbox, against QMIX.

A credit function from qllm's templates is linear in Q, so training needs only each state's
``(w(s), b(s))``. For a file that is exactly qllm's compilation of the credit spec in its header, the
trainer computes them from the spec (``qllm.rl.credit.SpecCredit``); for any other file the sandbox
worker computes them for the new states of every collected batch of episodes
(``qllm.rl.credit.SandboxCredit``). Either way the trainer never runs the function itself. This
benchmark trains one task three ways with the same recipe, one after the other in this process, and
prints env steps per second and the ratio to QMIX measured in the same run:

- ``qmix``: the learned mixer (reference);
- ``tfcaf-spec``: a credit-spec function as ``qllm generate`` writes it (the spec in its header);
- ``tfcaf-sandbox``: the same function compiled without the spec in its header (as qllm wrote them
  before, or as any edited file is), so computed in the sandbox.

The function is compiled from a fixed spec (more credit to agents near food and to those that loaded):
no LLM. ``--envs 8`` gives the 8-environment rollouts of the qllm and riit recipes (fewer, larger
sandbox calls).

Run:  .venv/bin/python benchmarks/tfcaf_credit.py [--task lbf-2s-10x10-3p-3f] [--steps 10000] [--envs 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qllm.agents.spec import SPEC_TEMPLATE_ID, CreditSpec, compile_spec, per_agent_quantities, spec_file
from qllm.agents.template import NamedState, assemble, keep_definitions
from qllm.envs.tasks import make_env
from qllm.rl import preset, train

SPEC = CreditSpec(
    reasoning="agents next to food that load matter",
    terms=[
        {"quantity": "nearest_food_distance", "more_credit_to": "lowest", "strength": "strong"},
        {"quantity": "last_action[LOAD]", "more_credit_to": "highest", "strength": "moderate"},
    ],
)


def credit_file(task: str, folder: Path, *, with_spec: bool) -> Path:
    """The spec's file, with the spec in its header (its credit from the spec) or without (the sandbox's)."""
    named = NamedState.for_task(make_env(task).info)
    source = (
        spec_file(named, SPEC)
        if with_spec
        else assemble(named, keep_definitions(compile_spec(SPEC, per_agent_quantities(named))),
                      template_id=SPEC_TEMPLATE_ID)
    )  # fmt: skip
    path = folder / f"tfcaf-{'spec' if with_spec else 'sandbox'}.py"
    path.write_text(source)
    return path


def steps_per_second(task: str, steps: int, envs: int, folder: Path, tfcaf: Path | None) -> float:
    """QMIX's recipe throughout; only the mixer differs."""
    overrides = {
        "steps": steps,
        "envs": envs,
        "eval_interval": steps,
        "eval_episodes": 2,
        "log_interval": steps,
    }
    if tfcaf is not None:
        overrides |= {"mixer": "tfcaf", "tfcaf": str(tfcaf)}
    config = preset("qmix", task=task, **overrides)
    started = time.perf_counter()
    result = train(config, runs_dir=folder / "runs")
    return result.t_env / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="lbf-2s-10x10-3p-3f")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--envs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = {
            "qmix": steps_per_second(args.task, args.steps, args.envs, folder, None),
            **{
                f"tfcaf-{way}": steps_per_second(
                    args.task, args.steps, args.envs, folder, credit_file(args.task, folder, with_spec=spec)
                )
                for way, spec in (("spec", True), ("sandbox", False))
            },
        }
    print(f"{args.task}, {args.steps} env steps each, {args.envs} environment(s)")
    for name, rate in rows.items():
        print(f"  {name:<15} {rate:8.0f} env steps/s   {rate / rows['qmix']:.2f}x qmix")


if __name__ == "__main__":
    main()

"""Task names: canonical names, raw simulator ids, parameters, and helpful errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qllm.envs import TaskNameError, all_task_names, families, resolve_task


@pytest.mark.parametrize(
    ("typed", "canonical", "family"),
    [
        ("matrix-climbing", "matrix-climbing", "matrix"),
        ("matrix-penalty-0", "matrix-penalty-0", "matrix"),
        ("matrix-penalty-100", "matrix-penalty-100", "matrix"),
        ("matrix-penalty-007", "matrix-penalty-7", "matrix"),
        ("matrix-qtran", "matrix-qtran", "matrix"),
        ("mpe-spread", "mpe-spread-3", "mpe"),
        ("mpe-spread-15", "mpe-spread-15", "mpe"),
        ("simple_spread_v3", "mpe-spread-3", "mpe"),
        ("simple_tag_v3", "mpe-tag", "mpe"),
        ("mpe-adversary", "mpe-adversary", "mpe"),
        ("lbf-2s-10x10-3p-3f", "lbf-2s-10x10-3p-3f", "lbf"),
        ("Foraging-2s-10x10-3p-3f-v3", "lbf-2s-10x10-3p-3f", "lbf"),
        ("Foraging-8x8-2p-2f-coop-v3", "lbf-8x8-2p-2f-coop", "lbf"),
        ("rware-tiny-2ag", "rware-tiny-2ag", "rware"),
        ("rware-small-4ag-hard-v2", "rware-small-4ag-hard", "rware"),
        ("  rware-tiny-2ag  ", "rware-tiny-2ag", "rware"),
    ],
)
def test_names_and_raw_ids_resolve_to_canonical_tasks(typed: str, canonical: str, family: str) -> None:
    spec = resolve_task(typed)
    assert (spec.name, spec.family) == (canonical, family)
    assert spec.make().info.task == canonical


@pytest.mark.parametrize(
    ("typed", "suggestion"),
    [
        ("mpe-sprad-3", "mpe-spread-3"),
        ("lbf-8x8-2p-2f-cop", "lbf-8x8-2p-2f-coop"),
        ("rware-tiny-2agents", "rware-tiny-2ag"),
        ("matrix-climb", "matrix-climbing"),
    ],
)
def test_unknown_names_suggest_close_matches(typed: str, suggestion: str) -> None:
    with pytest.raises(TaskNameError, match=f"unknown task '{typed}'.*Did you mean:.*{suggestion}"):
        resolve_task(typed)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("matrix-penalty-101", "0..100"),
        ("mpe-spread-0", "1..30"),
        ("mpe-spread-31", "1..30"),
        ("lbf-99x99-2p-2f", "unknown task"),  # well-formed but never registered by lbforaging
        ("rware-huge-2ag", "unknown task"),
        ("", "unknown task"),
        ("qmix", "tasks list"),
    ],
)
def test_bad_names_and_parameters_are_refused(typed: str, message: str) -> None:
    with pytest.raises(TaskNameError, match=message):
        resolve_task(typed)


def test_every_listed_name_resolves_to_itself() -> None:
    names = all_task_names()
    assert len(names) == len(set(names))
    for fam in families():
        for name in (*fam.examples, *fam.names()[:50]):
            assert resolve_task(name).name == name
            assert resolve_task(name).family == fam.key


def test_specs_describe_team_reward_and_opponent() -> None:
    for name in ("mpe-adversary", "mpe-tag"):
        assert "scripted" in resolve_task(name).opponent
        assert "pretrained" in resolve_task(f"{name}-pretrained").opponent
    for name in ("matrix-climbing", "mpe-spread-3", "lbf-8x8-2p-2f", "rware-tiny-2ag"):
        spec = resolve_task(name)
        assert spec.opponent is None
        assert spec.team and spec.reward and spec.description and spec.summary


def _in_a_fresh_process(code: str) -> str:
    """The last line ``code`` prints, run in a new interpreter (whose imports are its own)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_building_a_task_imports_only_its_own_simulator() -> None:
    # Every name is tried against the families in turn: the others' simulators (0.2 s for rware) are
    # imported only when one of their environments is built or their names are listed.
    code = (
        "import sys; from qllm.envs import make_env; make_env('lbf-8x8-2p-2f').close(); "
        "print(sorted(m for m in ('rware', 'mpe2', 'lbforaging') if m in sys.modules))"
    )
    assert _in_a_fresh_process(code) == "['lbforaging']"


def test_rware_names_resolve_in_a_process_that_has_not_imported_rware_yet() -> None:
    # Here rware's ids may be registered already (another test imported it); a new interpreter's are not.
    code = (
        "from qllm.envs import resolve_task; "
        "print([resolve_task(n).name for n in ('rware-tiny-2ag-v2', 'rware-small-4ag-hard')])"
    )
    assert _in_a_fresh_process(code) == "['rware-tiny-2ag', 'rware-small-4ag-hard']"

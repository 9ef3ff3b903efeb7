"""Tasks from outside qllm: the installed example plugin through every command, one-off references,
the generic environment adapter, and one clear line for each way a plugin can be broken."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import numpy as np
import pytest
from graph_fakes import GOOD, evaluation, scripted
from openai_stub import stub_server
from typer.testing import CliRunner

from qllm.agents import Models
from qllm.agents.spec import per_agent_quantities
from qllm.agents.template import NamedState
from qllm.cli import app
from qllm.envs import TaskNameError, families, make_env, resolve_task
from qllm.envs import plugins as plugins_module
from qllm.envs.adapter import StateMismatchError
from qllm.envs.plugins import ENTRY_POINT_GROUP, check_task, installed_plugins
from qllm.envs.tasks import BUILT_IN, TaskPluginError, registry
from qllm.evals.compare import markdown_report
from qllm.evals.runner import EvalModels, run_suite
from qllm.evals.store import ResultsStore
from qllm.evals.suites import EvalCase, EvalSuite

PLUGIN_TASK = "coordgrid-4x4-2ag"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


# --- the installed example plugin --------------------------------------------------------------------


def test_the_example_plugin_is_found_through_its_installed_entry_point() -> None:
    (entry_point,) = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "coordgrid"]
    assert entry_point.dist is not None and entry_point.dist.name == "qllm-coordination-grid"
    family = next(f for f in families() if f.key == "coordgrid")
    assert family.origin == "plugin 'coordgrid' from qllm-coordination-grid 0.1.0"
    spec = resolve_task(PLUGIN_TASK)
    assert spec.origin == family.origin and spec.trial_steps == 5_000
    assert make_env(PLUGIN_TASK).info.schema.names == ("agent_position", "goal_position")


def test_tasks_list_and_show_include_the_plugged_in_family() -> None:
    listed = invoke("tasks", "list")
    assert (
        listed.exit_code == 0 and "coordgrid" in listed.output and "qllm-coordination-grid" in listed.output
    )
    assert PLUGIN_TASK in invoke("tasks", "list", "--all").output.split()
    shown = invoke("tasks", "show", PLUGIN_TASK)
    assert shown.exit_code == 0, shown.output
    assert "goal_position" in shown.output and "plugin 'coordgrid'" in shown.output
    assert "checked on 3 random episodes" in shown.output
    described = json.loads(invoke("tasks", "show", PLUGIN_TASK, "--json").output)
    assert described["family"] == "coordgrid" and described["info"]["n_agents"] == 2


def test_a_mistyped_plugged_in_task_gets_did_you_mean() -> None:
    with pytest.raises(TaskNameError, match="Did you mean: coordgrid-4x4-2ag"):
        resolve_task("coordgrid-4x4-2a")


def test_spec_mode_quantities_come_from_the_declared_schema() -> None:
    names = [q.name for q in per_agent_quantities(NamedState.for_task(make_env(PLUGIN_TASK).info))]
    assert "goal_distance" in names


def test_generate_then_train_qllm_on_the_plugged_in_task(tmp_path: Path) -> None:
    with stub_server([GOOD, GOOD, evaluation()]) as server:
        generated = invoke(
            "generate", "--task", PLUGIN_TASK, "--coder", "openai:stub", "--evaluator", "openai:stub",
            "--coder-base-url", server.base_url, "--evaluator-base-url", server.base_url,
            "-k", "2", "-l", "1", "--runs-dir", str(tmp_path / "generate"),
        )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    (run_dir,) = (tmp_path / "generate").iterdir()
    assert run_dir.name.startswith(f"{PLUGIN_TASK}__tfcaf__")
    trained = invoke(
        "train", "--task", PLUGIN_TASK, "--mixer", "qllm", "--tfcaf", str(run_dir / "tfcaf.py"),
        "--steps", "200", "--eval-interval", "100", "--eval-episodes", "2",
        "--runs-dir", str(tmp_path / "train"),
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    (train_dir,) = (tmp_path / "train").iterdir()
    assert json.loads((train_dir / "config.json").read_text())["task"] == PLUGIN_TASK
    assert (train_dir / "final_model.pt").is_file()


def test_the_main_job_runs_on_the_plugged_in_task(tmp_path: Path) -> None:
    with stub_server([GOOD, GOOD, evaluation()]) as server:
        env = {
            "COLUMNS": "250",
            "QLLM_CODER_BASE_URL": server.base_url,
            "QLLM_EVALUATOR_BASE_URL": server.base_url,
        }
        result = runner.invoke(app, [
            "run", "--task", PLUGIN_TASK, "--coder", "openai:stub", "--evaluator", "openai:stub",
            "-k", "2", "-l", "1", "--steps", "200", "--runs-dir", str(tmp_path),
        ], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert {p.name.split("__")[1] for p in (run_dir / "training").iterdir()} == {"tfcaf", "qmix"}
    assert PLUGIN_TASK in (run_dir / "report.md").read_text()


def test_a_two_run_sweep_on_ray_trains_the_plugged_in_task(tmp_path: Path) -> None:
    """Ray's workers are fresh processes: they find the plugin through its entry point too."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "qllm.cli", "sweep", str(sweep), "--tasks", PLUGIN_TASK,
               "--mixers", "vdn", "--seeds", "2", "--steps", "300", "--workers", "1",
               "--set=eval_episodes=2", "--set=batch_size=4"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 runs done" in result.stdout
    assert len(list((sweep / "runs").glob(f"{PLUGIN_TASK}__vdn__*/final_model.pt"))) == 2


def test_an_eval_suite_scores_plugged_in_tasks_and_says_which_have_no_probes(tmp_path: Path) -> None:
    suite = EvalSuite(
        "plugins",
        "",
        (
            EvalCase(PLUGIN_TASK, seeds=(0,), candidates=1, rounds=1, repairs=1),
            EvalCase("plugin_fixtures:no_probes", seeds=(0,), candidates=1, rounds=1, repairs=1),
        ),
    )
    evaluation_run = run_suite(
        suite,
        EvalModels(mode="code", selection="evaluator"),
        ResultsStore(tmp_path / "evals.sqlite"),
        tmp_path / "runs",
        chat_models=lambda case, seed: Models(scripted([GOOD]), scripted([evaluation()])),
    )
    probed, unprobed = evaluation_run.results
    assert probed.status == unprobed.status == "succeeded"
    assert probed.scores["semantic_score"] is not None and unprobed.scores["semantic_score"] is None
    report = markdown_report(evaluation_run)
    assert "No semantic scores for plugin_fixtures:no_probes: the task declares no semantic probes." in report


# --- the generic adapter ---------------------------------------------------------------------------


def test_the_tuple_adapter_plays_lbforaging_as_the_built_in_adapter_does() -> None:
    generic, built_in = make_env("plugin_fixtures:lbf_tuple"), make_env("lbf-5x5-2p-1f")
    rng = np.random.default_rng(0)
    a, b = generic.reset(seed=4), built_in.reset(seed=4)
    while not b.done:
        np.testing.assert_array_equal(a.obs, b.obs)
        positions = generic.info.schema.view(a.state, "agent_position")
        np.testing.assert_array_equal(positions, built_in.info.schema.view(b.state, "agent_position"))
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in b.avail_actions])
        a, b = generic.step(actions), built_in.step(actions)
        assert a.reward == b.reward and a.terminated == b.terminated
    assert a.done


def test_agents_outside_the_team_are_driven_by_the_opponent_policy() -> None:
    env = make_env("plugin_fixtures:solo_with_opponent")
    assert env.info.n_agents == 1 and env.info.agent_names == ("agent_0",)
    moved = set()
    for seed in range(3):
        step = env.reset(seed=seed)
        start = env.info.schema.view(step.state, "agent_position")[1].copy()
        step = env.step(np.array([0]))
        moved.add(bool((env.info.schema.view(step.state, "agent_position")[1] != start).any()))
    assert True in moved  # the random opponent moves agent_1 while agent_0 stays


def test_an_environment_that_truncates_before_the_declared_limit_is_refused() -> None:
    with pytest.raises(TaskPluginError, match="declare episode_limit=25"):
        check_task(make_env("plugin_fixtures:long_limit"), episodes=1)


# --- broken plugins: one line each -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "exit_code", "message"),
    [
        (
            "plugin_fixtures:short_schema",
            1,
            "the declared fields hold 4 numbers, the environment's state has 6",
        ),
        ("plugin_fixtures:narrow_range", 1, "state field 'agent_position' (agent 1 row) is 3 at step 0"),
        ("plugin_fixtures:nan_state", 1, "state field 'goal_position' (row) is nan at step 3"),
        (
            "plugin_fixtures:failing_factory",
            1,
            "building its environment failed: RuntimeError: the simulator",
        ),
        ("plugin_fixtures:raises", 2, "raises() raised ImportError: needs mujoco"),
        ("plugin_fixtures:NOT_A_SPEC", 2, "names an object of type int, not a qllm.envs.TaskSpec"),
        ("no_such_module_anywhere:task", 2, "no module named 'no_such_module_anywhere'"),
    ],
)
def test_a_broken_one_off_task_is_refused_in_one_line(reference: str, exit_code: int, message: str) -> None:
    result = invoke("tasks", "show", reference)
    assert result.exit_code == exit_code, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output


def test_a_state_outside_its_schema_stops_training_with_one_line(tmp_path: Path) -> None:
    result = invoke("train", "--task", "plugin_fixtures:nan_state", "--mixer", "vdn", "--steps", "100",
                    "--runs-dir", str(tmp_path))  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.output.strip().splitlines()[-1].startswith("error: task 'grid': state field 'goal_position'")
    )
    with pytest.raises(StateMismatchError):
        check_task(make_env("plugin_fixtures:nan_state"))


def test_generate_on_a_task_whose_states_break_its_schema_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    unreachable = "http://127.0.0.1:9"  # never called: the states are recorded before any model is asked
    result = invoke("generate", "--task", "plugin_fixtures:nan_state", "--coder", "openai:stub",
                    "--evaluator", "openai:stub", "--coder-base-url", unreachable,
                    "--evaluator-base-url", unreachable, "--runs-dir", str(tmp_path))  # fmt: skip
    assert result.exit_code == 1
    assert "error: task 'grid': state field 'goal_position' (row) is nan" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


@pytest.fixture
def entry_points_with(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Replace the installed ``qllm.tasks`` entry points with the given ``name=value`` ones."""

    def install(**values: str) -> None:
        fake = [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in values.items()]
        monkeypatch.setattr(plugins_module, "entry_points", lambda group: fake)
        installed_plugins.cache_clear()

    yield install
    installed_plugins.cache_clear()


def test_broken_installed_plugins_are_left_out_with_one_line_each(
    entry_points_with: Callable[..., None],
) -> None:
    entry_points_with(
        good="plugin_fixtures:GOOD_FAMILY",
        names="plugin_fixtures:COLLIDING_NAMES",
        key="plugin_fixtures:COLLIDING_KEY",
        missing="no_such_plugin_module:FAMILY",
        wrong="plugin_fixtures:NOT_A_SPEC",
    )
    found = registry()
    assert [f.key for f in found.families if f.origin != BUILT_IN] == ["tinygrid"]
    assert resolve_task("tinygrid-3x3").origin == "plugin 'good'"
    assert sorted(found.problems) == [
        "plugin 'key': family key 'mpe' is taken by built-in",
        "plugin 'missing' (no_such_plugin_module:FAMILY) failed to load: ModuleNotFoundError: No module "
        "named 'no_such_plugin_module'",
        "plugin 'names': task name 'lbf-8x8-2p-2f' is a built-in lbf task's",
        "plugin 'wrong' (plugin_fixtures:NOT_A_SPEC) names an object of type int, not a qllm.envs.TaskFamily",
    ]
    listed = invoke("tasks", "list")
    assert listed.exit_code == 0 and "tinygrid" in listed.output and "lbf" in listed.output
    assert listed.output.count("warning:") == 4
    with pytest.raises(TaskNameError, match="4 task plugin"):
        resolve_task("coordgrid-4x4-2ag")  # the real plugin's entry point is not among the fakes

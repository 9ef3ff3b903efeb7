"""The `qllm` command line: help everywhere, task listing and description, recording, the main job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from qllm.cli import app
from qllm.envs.recording import load_recording

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich wraps to the terminal width; keep expected phrases on one line


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, env=WIDE)


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the CLI, as argument prefixes."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize("path", _command_paths(typer.main.get_command(app)), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output) > 200


def test_the_console_script_is_installed() -> None:
    qllm = Path(sys.executable).parent / "qllm"
    result = subprocess.run([qllm, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("qllm ")


def test_tasks_list_shows_every_family() -> None:
    result = invoke("tasks", "list")
    assert result.exit_code == 0
    for text in ("matrix", "mpe-spread-<N>", "lbf-8x8-2p-2f", "rware-tiny-2ag"):
        assert text in result.output


def test_tasks_list_all_prints_names_one_per_line() -> None:
    lines = invoke("tasks", "list", "--family", "mpe", "--all").output.split()
    assert lines == [
        "mpe-spread-3",
        "mpe-spread-6",
        "mpe-spread-10",
        "mpe-spread-15",
        "mpe-adversary",
        "mpe-adversary-pretrained",
        "mpe-tag",
        "mpe-tag-pretrained",
    ]


def test_tasks_list_unknown_family_is_a_usage_error() -> None:
    result = invoke("tasks", "list", "--family", "smac")
    assert result.exit_code == 2 and "unknown family 'smac'" in result.output


def test_tasks_show_describes_the_state() -> None:
    result = invoke("tasks", "show", "lbf-2s-10x10-3p-3f")
    assert result.exit_code == 0
    for text in ("food_level", "agent_position", "9:15", "LOAD", "50 steps"):
        assert text in result.output


def test_tasks_show_json_is_machine_readable() -> None:
    data = json.loads(invoke("tasks", "show", "mpe-tag", "--json").output)
    assert data["name"] == "mpe-tag" and "scripted" in data["opponent"]
    fields = {f["name"]: f for f in data["info"]["schema"]["fields"]}
    assert fields["prey_position"]["shape"] == [1, 2]
    assert data["info"]["state_dim"] == sum(f["count"] * len(f["features"]) for f in fields.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tasks", "show", "mpe-sprad-3"), "Did you mean: mpe-spread-3"),
        (("record", "--task", "nope", "--out", "x.npz"), "unknown task 'nope'"),
        (
            ("record", "--task", "matrix-climbing", "--out", "x.npz", "--episodes", "0"),
            "greater than or equal to 1",
        ),
        (("record", "--task", "matrix-climbing", "--out", "x.npz", "--policy", "greedy"), "random"),
        (("record", "--task", "matrix-climbing"), "--out"),
        (("run", "--task", "matrix-penalty-500"), "0..100"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, list(args), env=WIDE)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_record_writes_a_loadable_file(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "climb.npz"
    result = invoke(
        "record", "--task", "matrix-climbing", "--episodes", "4", "--out", str(out), "--seed", "3"
    )
    assert result.exit_code == 0, result.output
    rec = load_recording(out)
    assert rec.episodes.n_episodes == 4 and rec.info.task == "matrix-climbing"
    assert rec.metadata["seed"] == 3 and rec.metadata["policy"] == "random"


def test_record_refuses_a_directory_as_output(tmp_path: Path) -> None:
    result = invoke("record", "--task", "matrix-climbing", "--out", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.output


# --- qllm sandbox check --------------------------------------------------------------------------

GOOD = "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"
BAD = "def credit_assignment(agents_q, state):\n    return agents_q\n"


@pytest.fixture
def climbing_states(tmp_path: Path) -> Path:
    out = tmp_path / "climbing.npz"
    assert invoke("record", "--task", "matrix-climbing", "--episodes", "3", "--out", str(out)).exit_code == 0
    return out


def test_sandbox_check_passes_a_good_function(tmp_path: Path, climbing_states: Path) -> None:
    path = tmp_path / "vdn.py"
    path.write_text(GOOD)
    result = invoke(
        "sandbox", "check", str(path), "--task", "matrix-climbing", "--states", str(climbing_states)
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "implied weights" in result.output


def test_sandbox_check_fails_a_bad_function_with_exit_1(tmp_path: Path, climbing_states: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    result = invoke("sandbox", "check", str(path), "-t", "matrix-climbing", "--states", str(climbing_states))
    assert result.exit_code == 1
    assert "FAIL" in result.output and "shape" in result.output


def test_sandbox_check_json_records_states_when_none_given(tmp_path: Path) -> None:
    path = tmp_path / "vdn.py"
    path.write_text(GOOD)
    result = runner.invoke(app, ["sandbox", "check", str(path), "-t", "mpe-spread-3", "--json"], env=WIDE)
    assert result.exit_code == 0
    data = json.loads(result.stdout)  # notes about recording go to stderr, not into the JSON
    assert data["ok"] and data["backend"] == "gvisor" and len(data["weights"]["agents"]) == 3


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", ("-t", "matrix-climbing"), "no file at"),
        ("binary", ("-t", "matrix-climbing"), "not a UTF-8 text file"),
        ("good", ("-t", "matrix-climbng"), "Did you mean: matrix-climbing"),
        ("good", ("-t", "matrix-qtran", "--states", "{states}"), "records task 'matrix-climbing'"),
        ("good", ("-t", "matrix-climbing", "--states", "{missing}"), "no recording at"),
        ("good", ("-t", "matrix-climbing", "--backend", "vm"), "unknown sandbox backend"),
    ],
)
def test_sandbox_check_bad_input_is_a_usage_error(
    setup: str, args: tuple[str, ...], message: str, tmp_path: Path, climbing_states: Path
) -> None:
    path = tmp_path / "candidate.py"
    if setup == "good":
        path.write_text(GOOD)
    elif setup == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    filled = [a.format(states=climbing_states, missing=tmp_path / "none.npz") for a in args]
    result = runner.invoke(app, ["sandbox", "check", str(path), *filled], env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# --- qllm train / evaluate -----------------------------------------------------------------------

TINY = ("--steps", "150", "--eval-interval", "50", "--eval-episodes", "2", "--checkpoint-interval", "100")


def test_train_leaves_a_complete_run_folder_and_evaluate_reads_it(tmp_path: Path) -> None:
    result = invoke("train", "-t", "matrix-climbing", "--mixer", "vdn", *TINY, "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("matrix-climbing__vdn__0__")
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.csv", "final_model.pt", "learning_curve.png", "checkpoints"} <= names
    assert json.loads((run_dir / "config.json").read_text())["mixer"] == "vdn"
    evaluated = invoke("evaluate", str(run_dir), "--episodes", "3")
    assert evaluated.exit_code == 0 and "greedy test return" in evaluated.output


@pytest.mark.parametrize(("flag", "ahead"), [((), True), (("--collect-in-line",), False)])
def test_train_collects_ahead_unless_asked_to_collect_in_line(
    flag: tuple[str, ...], ahead: bool, tmp_path: Path
) -> None:
    result = invoke(
        "train", "-t", "matrix-climbing", "--mixer", "vdn", *TINY, *flag, "--runs-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["collect_ahead"] is ahead


def test_train_resume_continues_a_run(tmp_path: Path) -> None:
    assert invoke("train", "-t", "matrix-qtran", *TINY, "--runs-dir", str(tmp_path)).exit_code == 0
    (run_dir,) = tmp_path.iterdir()
    result = invoke("train", "--resume", str(run_dir), "--steps", "250")
    assert result.exit_code == 0, result.output
    assert "250 steps" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mixer", "qmixx"), "unknown mixer 'qmixx'"),
        (("--mixer", "qllm"), "pass --tfcaf FILE"),
        (("--mixer", "qllm", "--tfcaf", "missing.py"), "no credit-function file"),
        (("-t", "lbf-8x8-2p-2f-copo"), "Did you mean"),
        (("--resume", "nowhere"), "not a qllm run folder"),
    ],
)
def test_train_bad_input_is_a_usage_error(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", *args, "--steps", "50", "--runs-dir", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_train_refuses_a_tfcaf_written_for_another_state(tmp_path: Path) -> None:
    path = tmp_path / "spread.py"
    path.write_text(
        '# qllm-tfcaf: {"task": "mpe-spread-3", "state_dim": 18}\n'
        "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"
    )
    result = runner.invoke(app, ["train", "-t", "lbf-8x8-2p-2f", "--mixer", "qllm", "--tfcaf", str(path),
                                 "--runs-dir", str(tmp_path)], env=WIDE)  # fmt: skip
    assert result.exit_code == 2
    assert "state of size 18" in result.output and "state size 24" in result.output


def test_train_refuses_a_tfcaf_that_fails_validation(tmp_path: Path) -> None:
    path = tmp_path / "negative.py"
    path.write_text(
        "def credit_assignment(agents_q, state):\n    return -agents_q.sum(dim=1, keepdim=True)\n"
    )
    result = runner.invoke(app, ["train", "-t", "matrix-climbing", "--mixer", "qllm", "--tfcaf", str(path),
                                 "--runs-dir", str(tmp_path)], env=WIDE)  # fmt: skip
    assert result.exit_code == 2 and "not_monotonic" in result.output
    # Said before the sandbox's worker starts (seconds), so that the wait is not silent.
    assert result.output.index("Checking the credit function") < result.output.index("not_monotonic")
    assert not list(tmp_path.glob("*__*")), "a refused run must not leave a run folder"


def test_train_says_a_compiled_spec_needs_no_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qllm.agents.spec import CreditSpec, spec_file
    from qllm.agents.template import NamedState
    from qllm.envs import task_info

    term = {"quantity": "last_action[action_0]", "more_credit_to": "lowest", "strength": "strong"}
    spec = CreditSpec(reasoning="the agent that can reach the optimum alone", terms=[term])
    path = tmp_path / "spec.py"
    path.write_text(spec_file(NamedState.for_task(task_info("matrix-climbing")), spec))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sandbox was started for a compiled spec")

    monkeypatch.setattr(sys.modules["qllm.rl.train"], "Sandbox", refuse)
    result = runner.invoke(app, ["train", "-t", "matrix-climbing", "--mixer", "qllm", "--tfcaf", str(path),
                                 *TINY, "--runs-dir", str(tmp_path)], env=WIDE)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Credit from the spec in" in result.output and "Checking the credit function" not in result.output


def test_training_writes_tensorboard_events(tmp_path: Path) -> None:
    assert invoke("train", "-t", "matrix-climbing", *TINY, "--runs-dir", str(tmp_path)).exit_code == 0
    (run_dir,) = tmp_path.iterdir()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_one_command_imports_only_its_own_module() -> None:
    # `qllm train` starts many times in sweeps and benchmarks: the LLM stack and Ray cost seconds each.
    code = (
        "import sys\nfrom qllm.cli import build_app\nbuild_app(['train'])\n"
        "print(sorted({'langgraph', 'langchain_core', 'ray', 'scipy'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_executable_ends_without_collecting_what_it_imported() -> None:
    """The process's last garbage collections over torch's objects made a training run's exit take 0.8-0.9 s
    instead of 0.2; main() freezes the heap once the command is done, succeeded or failed."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "from qllm.cli import main\n"
        "sys.argv = ['qllm', *sys.argv[1:]]\n"
        "main()\n"
    )
    for argv, expected_code in ((["tasks", "list"], 0), (["train", "--task", "no-such-task"], 2)):
        run = [sys.executable, "-c", code, *argv]
        result = subprocess.run(run, check=False, capture_output=True, text=True)
        assert result.returncode == expected_code, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "frozen True"


# --- exit codes: usage 2, failure 1 (qllm.cli.errors) --------------------------------------------


def test_train_that_stops_is_a_failure_not_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qllm.cli import training
    from qllm.rl.train import TrainingError

    def stops(*args: object, **kwargs: object) -> None:
        raise TrainingError("training stopped at step 40 (mixer tfcaf): NaN in an update; resume with [x]")

    monkeypatch.setattr(training, "train", stops)
    result = runner.invoke(
        app, ["train", "-t", "matrix-climbing", *TINY, "--runs-dir", str(tmp_path)], env=WIDE
    )
    assert result.exit_code == 1, result.output
    assert "error: training stopped at step 40" in result.output and "[x]" in result.output


@pytest.mark.parametrize(("given", "code"), [(True, 2), (False, 1)])
def test_a_refused_credit_file_is_usage_when_given_and_failure_when_generated(
    given: bool, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `qllm train --tfcaf FILE` names the file (usage); `qllm run` wrote it itself (failure).
    import typer

    from qllm.cli import training
    from qllm.rl import preset
    from qllm.rl.tfcaf import TFCAFError

    def refuses(*args: object, **kwargs: object) -> None:
        raise TFCAFError("f.py failed validation on matrix-climbing: not_monotonic")

    monkeypatch.setattr(training, "train_with_progress", refuses)
    config = preset("qmix", task="matrix-climbing", steps=10)
    with pytest.raises((typer.Exit, typer.BadParameter)) as raised:
        training.train_or_exit(config, tmp_path, None, credit_file_given=given)
    exit_code = raised.value.exit_code
    assert exit_code == code


@pytest.mark.parametrize(("error", "code"), [("sweep", 1), ("provider", 2)])
def test_a_sweep_whose_credit_function_cannot_be_generated_fails_with_1(
    error: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What run_sweep raises once the plan is read: a task's generation failed (the work), or a model
    # the settings name cannot be used (usage).
    from qllm.cli import sweep
    from qllm.llm.providers import ProviderError
    from qllm.sweep.plan import SweepError

    raised = (
        SweepError("no credit function for matrix-climbing") if error == "sweep" else ProviderError("no key")
    )

    def raises(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(sweep, "run_sweep", raises)
    folder = tmp_path / "s"
    args = ["sweep", str(folder), "--tasks", "matrix-climbing", "--mixers", "qmix", "--seeds", "1", "--local"]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == code, result.output
    assert f"error: {raised}" in result.output and f"qllm sweep {folder}" in result.output


def test_sandbox_check_without_any_sandbox_is_a_failure(
    tmp_path: Path, climbing_states: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qllm.cli import sandbox
    from qllm.sandbox import SandboxUnavailableError

    def unavailable(*args: object, **kwargs: object) -> None:
        raise SandboxUnavailableError("no sandbox backend can run on this machine")

    monkeypatch.setattr(sandbox, "Sandbox", unavailable)
    path = tmp_path / "vdn.py"
    path.write_text(GOOD)
    args = ["sandbox", "check", str(path), "-t", "matrix-climbing", "--states", str(climbing_states)]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 1 and "no sandbox backend can run" in result.output


def test_llm_install_from_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["llm", "install", "--parts", str(tmp_path / "none")], env=WIDE)
    assert result.exit_code == 2 and "is not a folder" in result.output


# --- progress without a terminal: full lines, not a bar cut to 80 columns ------------------------


def test_train_without_a_terminal_prints_full_progress_lines(tmp_path: Path) -> None:
    # CliRunner's output is not a terminal, as with `qllm train > log`; 80 columns is what a pipe gets.
    result = runner.invoke(
        app, ["train", "-t", "matrix-climbing", "--mixer", "vdn", *TINY, "--runs-dir", str(tmp_path)],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("matrix-climbing vdn: ")]
    assert 5 <= len(lines) <= 15, result.output  # about one a tenth of the budget, and the last
    assert lines[-1].startswith("matrix-climbing vdn: 150/150 steps (100%)")
    assert all("steps/s" in line and "test " in line and "elapsed" in line for line in lines)
    assert max(len(line) for line in lines) > 80 and "…" not in result.output and "━" not in result.output


def test_progress_lines_follow_the_budget_and_the_sweep_says_which_runs_start_and_end() -> None:
    import io

    from rich.console import Console

    from qllm.cli.progress import step_progress
    from qllm.cli.sweep import _SweepWatcher
    from qllm.sweep.execute import RunRecord, SweepStatus

    out = io.StringIO()
    console = Console(file=out, width=80)
    assert not console.is_terminal
    with step_progress(console, "sweep", None) as progress:
        watcher = _SweepWatcher(progress)
        status = SweepStatus(budgets={"a__qmix__0": 1000, "b__qmix__0": 1000}, running={"a__qmix__0": 0})
        watcher.update(status)
        status.running["a__qmix__0"] = 500
        watcher.update(status)
        del status.running["a__qmix__0"]
        status.done.append("a__qmix__0")
        status.ended.append(RunRecord("a__qmix__0", 1, "done", 12.0, final_return=0.5))
        status.running["b__qmix__0"] = 0
        watcher.update(status)
    text = out.getvalue()
    assert "started a__qmix__0 (1,000 steps)" in text and "done   a__qmix__0: greedy test return 0.5" in text
    assert text.count("started a__qmix__0") == 1 and "started b__qmix__0" not in text  # b reported no steps
    assert "sweep: 500/2,000 steps (25%) | 0/2 runs done, 1 to go |" in text
    assert "sweep: 1,000/2,000 steps (50%) | 1/2 runs done, 1 to go |" in text

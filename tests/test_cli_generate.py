"""`qllm generate` and `qllm run` through the real provider path, against a scripted server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from graph_fakes import BAD_KEY, GOOD, GOOD_OTHER, evaluation
from openai_stub import stub_server
from typer.testing import CliRunner

from qllm.cli import app

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "250", **(env or {})})


def stub_flags(url: str) -> tuple[str, ...]:
    return ("--coder", "openai:stub-coder", "--evaluator", "openai:stub-evaluator",
            "--coder-base-url", url, "--evaluator-base-url", url)  # fmt: skip


def test_generate_writes_a_validated_function_through_an_openai_compatible_server(tmp_path: Path) -> None:
    script = [(429, "slow down"), BAD_KEY, GOOD, GOOD, evaluation(choice=2)]
    with stub_server(script) as server:
        result = invoke(
            "generate", "--task", "matrix-climbing", *stub_flags(server.base_url), "-k", "2", "-l", "1",
            "--runs-dir", str(tmp_path),
        )  # fmt: skip
        requests = server.requests
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "tfcaf.py").is_file() and "succeeded" in result.output
    assert "will retry" in result.output and "runtime" in result.output  # the 429 and the failed first draft
    assert [r["model"] for r in requests] == ["stub-coder"] * 4 + ["stub-evaluator"]
    assert len({r["seed"] for r in requests[1:4]}) == 3  # one sampling seed per call
    # The reply length limit in the field OpenAI-compatible servers read (not only max_completion_tokens).
    assert all(r["max_tokens"] == 1024 for r in requests)
    assert json.loads((run_dir / "artifact.json").read_text())["coder"].startswith("openai:stub-coder@")


def test_generate_ends_with_a_clear_error_on_bad_credentials(tmp_path: Path) -> None:
    with stub_server([(401, "Incorrect API key provided")]) as server:
        result = invoke("generate", *stub_flags(server.base_url), "--runs-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "bad or missing credentials (HTTP 401)" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output


def test_generate_exits_1_when_no_candidate_passes(tmp_path: Path) -> None:
    with stub_server([BAD_KEY] * 2) as server:
        result = invoke(
            "generate", *stub_flags(server.base_url), "-k", "1", "-l", "1", "--repairs", "1",
            "--runs-dir", str(tmp_path),
        )  # fmt: skip
    assert result.exit_code == 1
    assert "failed" in result.output and "no candidate passed validation" in result.output
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / "tfcaf.py").exists()


def test_generate_resume_continues_an_interrupted_run(tmp_path: Path) -> None:
    with stub_server([(401, "key revoked")]) as server:
        first = invoke(
            "generate", *stub_flags(server.base_url), "-k", "1", "-l", "1", "--runs-dir", str(tmp_path)
        )
    assert first.exit_code == 2
    (run_dir,) = tmp_path.iterdir()
    # The base URL is part of the saved settings; point the resumed run at a new server.
    settings = json.loads((run_dir / "settings.json").read_text())
    with stub_server([GOOD, evaluation()]) as server:
        settings["coder_base_url"] = settings["evaluator_base_url"] = server.base_url
        (run_dir / "settings.json").write_text(json.dumps(settings))
        result = invoke("generate", "--resume", str(run_dir))
    assert result.exit_code == 0, result.output
    assert (run_dir / "tfcaf.py").is_file()


def test_generate_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    cases = [
        (("generate", "--task", "matrix-climbin"), "matrix-climbing"),
        (("generate", "--coder", "gpt-4o"), "unknown model spec"),
        (("generate", "--resume", str(tmp_path)), "not a generation run folder"),
        (("generate", "--config", str(tmp_path / "missing.toml")), "cannot read config file"),
        (("generate", "--selection", "best"), "selection must be one of auto, evaluator, consensus, trial"),
        (("generate", "--selection", "trial", "--trial-steps", "0"), "selection trial needs trials"),
        (("generate", "--trial-executor", "gpu"), "trial_executor must be one of ray, inline"),
    ]
    for args, message in cases:
        result = invoke(*args, "--runs-dir", str(tmp_path / "runs"))
        assert result.exit_code == 2, args
        assert message in result.output, (args, result.output)


def test_generate_with_trial_selection_prints_each_trial_and_the_verdict(tmp_path: Path) -> None:
    # 100 steps are four episodes and no update: both functions train exactly as the untrained networks
    # play, so they tie, and the evaluator (a hosted model's judge) decides.
    with stub_server([GOOD, GOOD_OTHER, evaluation(choice=2)]) as server:
        result = invoke(
            "generate", "--task", "matrix-climbing", *stub_flags(server.base_url), "-k", "2", "-l", "1",
            "--selection", "trial", "--trial-steps", "100", "--trial-seeds", "1",
            "--trial-executor", "inline", "--runs-dir", str(tmp_path),
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trials of 100 steps x 1 seed on inline" in result.output
    assert "trial of equal weights, seed 0: greedy return" in result.output
    assert "round 1: best is r1-c1 (trial)" in result.output  # the evaluator broke the tie: choice 2
    assert "equal weights (VDN)" in result.output  # the verdict, in the round's line and the final one


def test_run_generates_trains_both_methods_and_reports(tmp_path: Path) -> None:
    with stub_server([GOOD, GOOD, evaluation()]) as server:
        env = {"QLLM_CODER_BASE_URL": server.base_url, "QLLM_EVALUATOR_BASE_URL": server.base_url}
        result = invoke(
            "run", "--task", "lbf-5x5-2p-1f", "--coder", "openai:stub", "--evaluator", "openai:stub",
            "-k", "2", "-l", "1", "--steps", "300", "--runs-dir", str(tmp_path), env=env,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("lbf-5x5-2p-1f__run__0__")
    (generation,) = (run_dir / "generate").iterdir()
    assert (generation / "tfcaf.py").is_file()
    trained = {p.name.split("__")[1] for p in (run_dir / "training").iterdir()}
    assert trained == {"tfcaf", "qmix"}
    report = (run_dir / "report.md").read_text()
    assert "QLLM (generated TFCAF)" in report and "QMIX" in report and "def agent_weight" in report
    assert (run_dir / "comparison.png").stat().st_size > 10_000

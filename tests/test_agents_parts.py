"""The graph's parts on their own: code template, extractors, prompt files, providers, settings."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
import torch
from langchain_openai import ChatOpenAI

from qllm.agents.context import GenerationSettings, SettingsError
from qllm.agents.extract import ExtractionError, extract_code, extract_json
from qllm.agents.state import Evaluation
from qllm.agents.template import (
    NamedState,
    TemplateError,
    assemble,
    keep_definitions,
    named_state_values,
    render_state,
)
from qllm.envs.recording import record
from qllm.llm.providers import ModelSpec, ProviderError, is_transient, make_chat_model, provider_error
from qllm.prompts import PromptError, PromptLibrary
from qllm.sandbox import Sandbox, ValidationInputs
from qllm.sandbox.restricted import load_credit_function

TEMPLATE_TASKS = ("matrix-climbing", "lbf-2s-10x10-3p-3f", "mpe-spread-3", "mpe-tag", "rware-tiny-2ag")


# --- the code template ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TEMPLATE_TASKS)
def test_generated_named_state_matches_the_host_twin(task: str) -> None:
    rec = record(task, 2, seed=1)
    named = NamedState.for_task(rec.info)
    source = assemble(named, keep_definitions("def agent_weight(s, i):\n    return 1.0"))
    generated = load_credit_function(source).function.__globals__["named_state"]
    for row in rec.episodes.visited_states()[:20].tolist():
        ours = generated(row)
        host = named_state_values(named, row)
        assert ours.keys() == host.keys()
        for key in ours:
            assert torch.allclose(
                torch.tensor(ours[key], dtype=torch.float64),
                torch.tensor(host[key], dtype=torch.float64),
                atol=1e-3,
            ), key


def test_lbf_view_has_per_entity_fields_and_grid_distances() -> None:
    named = NamedState.for_task(record("lbf-2s-10x10-3p-3f", 1).info)
    assert named.slices()["food_level"] == [15, 18]
    assert named.slices()["agent_to_food_distance"] is None  # derived
    row = [0.0] * 36
    row[0:2], row[9:11] = [2.0, 3.0], [5.0, 7.0]  # agent 0 at (2, 3), food 0 at (5, 7)
    assert named_state_values(named, row)["agent_to_food_distance"][0][0] == 7  # manhattan
    assert '"agent_position": [(2, 3), (0, 0), (0, 0)]' in render_state(named, row)


ZIPPED_HELPERS = """
def zipped_distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def zipped_manhattan(a, b):
    return sum(abs(x - y) for x, y in zip(a, b))
"""
"""The template's geometry helpers as they were, pairing the coordinates with zip."""


def test_the_geometry_helpers_give_the_zipped_sums_bit_for_bit() -> None:
    named = NamedState.for_task(record("lbf-2s-10x10-3p-3f", 1).info)
    source = assemble(named, keep_definitions("def agent_weight(s, i):\n    return 1.0")) + ZIPPED_HELPERS
    helpers = load_credit_function(source).function.__globals__
    generator = torch.Generator().manual_seed(0)
    for size_a, size_b in [(2, 2), (3, 3), (2, 3), (3, 2), (1, 1)]:  # zip stops at the shorter; so do they
        for _ in range(50):
            a = tuple((torch.randn(size_a, generator=generator) * 10).tolist())
            b = tuple((torch.randn(size_b, generator=generator) * 10).tolist())
            assert helpers["distance"](a, b) == helpers["zipped_distance"](a, b)
            assert helpers["manhattan"](a, b) == helpers["zipped_manhattan"](a, b)


def test_template_clamps_and_normalises_weights_and_adds_the_bias() -> None:
    named = NamedState.for_task(record("lbf-2s-10x10-3p-3f", 1).info)
    code = "def agent_weight(s, i):\n    return [-5.0, 1.0, 3.0][i]\n\ndef state_bias(s):\n    return 0.5\n"
    fn = load_credit_function(assemble(named, keep_definitions(code))).function
    q = torch.tensor([[1.0, 2.0, 3.0]])
    out = fn(q, torch.zeros(1, 36))
    assert out.shape == (1, 1)
    # weights [0, 1, 3] rescaled to sum to 3 agents: [0, 0.75, 2.25]
    assert out.item() == pytest.approx(0.75 * 2 + 2.25 * 3 + 0.5)


def test_template_reports_a_non_number_weight_clearly() -> None:
    named = NamedState.for_task(record("matrix-climbing", 1).info)
    fn = load_credit_function(
        assemble(named, keep_definitions("def agent_weight(s, i):\n    return [1]"))
    ).function
    with pytest.raises(TypeError, match=r"agent_weight\(s, 0\) must return one number"):
        fn(torch.ones(2, 2), torch.zeros(2, 9))


def test_keep_definitions_drops_examples_and_reserved_names() -> None:
    code = (
        "import math\nSCALE = 2.0\n\ndef helper(x):\n    return x * SCALE\n\n"
        "def agent_weight(s, i):\n    return helper(1.0)\n\n"
        "def credit_assignment(agents_q, state):\n    return agents_q\n\n"
        "print(agent_weight({}, 0))\nif __name__ == '__main__':\n    pass\n"
    )
    kept = keep_definitions(code).source
    assert "SCALE = 2.0" in kept and "def helper" in kept and "def agent_weight" in kept
    assert "credit_assignment" not in kept and "print(" not in kept and "__main__" not in kept


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("def weights(s, i):\n    return 1", "must define `def agent_weight"),
        ("def agent_weight(s):\n    return 1", "exactly two parameters"),
        (
            "def agent_weight(s, i):\n    return 1\ndef state_bias(s, i):\n    return 0",
            "exactly one parameter",
        ),
        ("def agent_weight(s, i)\n    return 1", "SyntaxError on line 1"),
    ],
)
def test_keep_definitions_refuses_unusable_answers(code: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        keep_definitions(code)


# --- extractors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "```python\ndef agent_weight(s, i):\n    return 1\n```",
        "Sure!\n```py\ndef agent_weight(s, i):\n    return 1\n```\nThis works because...",
        "```\ndef agent_weight(s, i):\n    return 1\n```",
        "def agent_weight(s, i):\n    return 1",
        "```python\ndef agent_weight(s, i):\n    return 1\n",  # truncated: no closing fence
        "```python\nx = 1\n```\nthen\n```python\n    def agent_weight(s, i):\n        return 1\n```",
    ],
)
def test_extract_code_finds_the_function_in_common_reply_shapes(reply: str) -> None:
    assert extract_code(reply, must_define="agent_weight") == "def agent_weight(s, i):\n    return 1"


def test_extract_code_keeps_a_broken_block_so_the_error_reaches_the_coder() -> None:
    assert extract_code("```python\ndef agent_weight(s, i)\n```", "agent_weight") == "def agent_weight(s, i)"
    with pytest.raises(ExtractionError, match="no Python code defining"):
        extract_code("```python\nx = 1\n```", "agent_weight")
    with pytest.raises(ExtractionError, match="empty"):
        extract_code("   ", "agent_weight")


def test_extract_json_skips_prose_and_braces_inside_strings() -> None:
    reply = 'Thinking {not json}. {"choice": 2, "tips": "use {braces} \\"quoted\\"", "satisfied": true} done'
    evaluation = extract_json(reply, Evaluation)
    assert evaluation.choice == 2 and evaluation.tips == 'use {braces} "quoted"' and evaluation.satisfied


def test_extract_json_says_what_is_wrong() -> None:
    with pytest.raises(ExtractionError, match="no JSON object"):
        extract_json("the second one", Evaluation)
    with pytest.raises(ExtractionError, match="choice"):
        extract_json('{"tips": "x"}', Evaluation)


# --- prompt files -----------------------------------------------------------------------------------


def test_prompt_loader_fails_loudly_on_any_mismatch(tmp_path: Path) -> None:
    (tmp_path / "v9").mkdir()
    (tmp_path / "v9" / "greet.md").write_text("Hello ${name}, see {this} dict literal.\n")
    prompts = PromptLibrary("v9", root=tmp_path)
    assert prompts.render("greet", name="Ada") == "Hello Ada, see {this} dict literal.\n"
    with pytest.raises(PromptError, match=r"missing values \['name'\]"):
        prompts.render("greet")
    with pytest.raises(PromptError, match=r"unused values \['extra'\]"):
        prompts.render("greet", name="Ada", extra=1)
    with pytest.raises(PromptError, match="no prompt 'nope'"):
        prompts.render("nope")
    with pytest.raises(PromptError, match="no prompt version 'v0'"):
        PromptLibrary("v0", root=tmp_path)


def test_shipped_prompt_version_hashes_every_template() -> None:
    prompts = PromptLibrary()
    hashes = prompts.hashes()
    assert set(hashes) == {
        "coder_system",
        "contract",
        "function_system",
        "function_contract",
        "function_improve",
        "function_repair",
        "spec_system",
        "spec_contract",
        "spec_improve",
        "spec_repair",
        "evaluator",
        "evaluator_system",
        "improve",
        "repair",
        "task",
    }
    assert all(len(h) == 64 for h in hashes.values())


# --- providers --------------------------------------------------------------------------------------


def test_model_specs_parse_and_unknown_ones_are_refused() -> None:
    assert ModelSpec.parse("local").provider == "local"
    spec = ModelSpec.parse("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    assert (spec.provider, spec.model, spec.base_url) == ("openai", "gpt-4o-mini", "http://127.0.0.1:9/v1")
    assert ModelSpec.parse("deepseek:deepseek-reasoner").info.api_key_env == "DEEPSEEK_API_KEY"
    with pytest.raises(ProviderError, match="unknown model spec 'gpt-4o'"):
        ModelSpec.parse("gpt-4o")
    with pytest.raises(ProviderError, match="unknown model spec"):
        ModelSpec.parse("mystery:model")


def test_openai_compatible_server_builds_a_chat_model_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = make_chat_model(ModelSpec.parse("openai:my-model", "http://127.0.0.1:9/v1"), 0.3, 256, 30)
    assert isinstance(model, ChatOpenAI)
    assert model.openai_api_base == "http://127.0.0.1:9/v1" and model.max_retries == 0


def test_missing_credentials_or_package_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="set OPENAI_API_KEY"):
        make_chat_model(ModelSpec.parse("openai:gpt-4o-mini"), 0.3, 256, 30)
    with pytest.raises(ProviderError, match="pip install langchain-anthropic"):
        make_chat_model(ModelSpec.parse("anthropic:claude-x"), 0.3, 256, 30)


def _openai_error(cls: type[openai.APIStatusError], status: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return cls("boom", response=httpx.Response(status, request=request), body=None)


def test_provider_failures_are_sorted_into_transient_and_fatal() -> None:
    spec = ModelSpec.parse("openai:gpt-4o-mini")
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert is_transient(_openai_error(openai.RateLimitError, 429))
    assert is_transient(_openai_error(openai.InternalServerError, 503))
    assert is_transient(openai.APITimeoutError(request=request))
    assert is_transient(openai.APIConnectionError(request=request))
    assert not is_transient(_openai_error(openai.AuthenticationError, 401))
    fatal = provider_error(_openai_error(openai.NotFoundError, 404), spec)
    assert fatal is not None and "unknown model or endpoint (HTTP 404)" in str(fatal)
    assert provider_error(_openai_error(openai.RateLimitError, 429), spec) is None


# --- settings ---------------------------------------------------------------------------------------


def test_settings_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "qllm.toml"
    config.write_text('[generate]\ncoder = "openai:from-file"\nevaluator = "openai:from-file"\nrounds = 5\n')
    settings = GenerationSettings.resolve(
        {"task": "matrix-climbing", "evaluator": "openai:from-flag", "rounds": None},
        config_file=config,
        environ={"QLLM_CODER": "deepseek:from-env"},
    )
    assert (settings.coder, settings.evaluator, settings.rounds) == (
        "deepseek:from-env",
        "openai:from-flag",
        5,
    )
    assert json.loads(json.dumps(settings.to_dict())) == settings.to_dict()


def test_bad_settings_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown settings"):
        GenerationSettings.from_dict({"task": "matrix-climbing", "rouns": 2})
    with pytest.raises(SettingsError, match="candidates must be at least 1"):
        GenerationSettings(task="matrix-climbing", candidates=0)
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        GenerationSettings.resolve({"task": "x"}, config_file=bad, environ={})


def test_a_function_that_crashes_on_the_padding_state_fails_validation() -> None:
    """Trainers evaluate the function on the all-zero state padding finished episodes: so does validation."""
    rec = record("lbf-2s-10x10-3p-3f", 3, seed=0)
    inputs = ValidationInputs.from_recording(rec)
    assert (inputs.states == 0).all(dim=1).sum() == 1
    code = "def agent_weight(s, i):\n    if sum(s['agent_level']) > 0:\n        w = 1.0\n    return w\n"
    source = assemble(NamedState.for_task(rec.info), keep_definitions(code))
    with Sandbox() as sandbox:
        result = sandbox.validate(source, inputs)
    assert not result.ok and "UnboundLocalError" in result.message


def test_tests_cannot_reach_real_models_unless_they_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard in conftest.py: the local model's server is never started, and a real provider is never
    called, by a test not marked ``real_model``."""
    from conftest import RealModelRefusedError

    with pytest.raises(RealModelRefusedError, match="local model's server"):
        make_chat_model(ModelSpec.parse("local"), 0.3, 256, 30)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    model = make_chat_model(ModelSpec.parse("openai:gpt-4o-mini"), 0.3, 256, 30)
    with pytest.raises(RealModelRefusedError, match=r"api\.openai\.com"):
        model.invoke("hello")

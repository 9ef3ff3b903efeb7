"""Mode ``function``: the coder writes the whole batched ``credit_assignment(agents_q, state)``, as the
QLLM paper's coder does; the sandbox's checks are all that stand between it and the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from graph_fakes import evaluation, generate, scripted, settings

from qllm.agents import RunStatus
from qllm.agents.artifact import METADATA_FILE
from qllm.agents.context import SettingsError
from qllm.agents.template import FUNCTION_TEMPLATE_ID, NamedState, column_slices
from qllm.envs.tasks import make_env
from qllm.rl import preset, train
from qllm.sandbox import ErrorKind

# matrix-climbing's state: the previous joint action, one-hot over the 9 joint actions.
FAVOURS_AGENT_0 = """Here is the function:
```python
def credit_assignment(agents_q, state):
    joint = state[:, 0:9]
    weights = torch.ones_like(agents_q)
    weights[:, 0] = 1.0 + joint[:, 0:3].sum(dim=1)
    return (weights * agents_q).sum(dim=1, keepdim=True)
```"""
WRONG_SHAPE = """```python
def credit_assignment(agents_q, state):
    return agents_q.sum(dim=1)
```"""
NEGATIVE = """```python
def credit_assignment(agents_q, state):
    return agents_q[:, :1] - agents_q[:, 1:]
```"""


def test_a_whole_function_is_validated_repaired_with_its_shapes_and_becomes_the_artifact(
    tmp_path: Path,
) -> None:
    coder = scripted([WRONG_SHAPE, FAVOURS_AGENT_0, FAVOURS_AGENT_0])
    outcome = generate(tmp_path, coder, scripted([evaluation(choice=1)]), mode="function")

    assert outcome.status == RunStatus.SUCCEEDED
    first = outcome.state.candidates[0]
    assert [a.result.ok for a in first.attempts] == [False, True]
    assert first.attempts[0].result.error_kind == ErrorKind.SHAPE
    batch = outcome.state.candidates[1].final.result.weights.n_states
    repair = coder.prompts[1]
    assert f"`agents_q` of shape [{batch}, 2] and `state` of shape [{batch}, 9]" in repair
    assert "returned shape" in repair and "agents_q.sum(dim=1)" in repair
    first_prompt = coder.prompts[0]
    assert "credit_assignment(agents_q, state)" in first_prompt and "state[:, 0:9]" in first_prompt
    assert "agent_weight" not in first_prompt  # nothing of the template's contract
    metadata = json.loads((outcome.run_dir / METADATA_FILE).read_text())
    assert metadata["template"] == FUNCTION_TEMPLATE_ID and metadata["mode"] == "function"
    source = outcome.artifact.read_text()
    assert "weights[:, 0] = 1.0 + joint[:, 0:3].sum(dim=1)" in source and "def agent_weight" not in source
    # The artifact trains like any credit file: linear in Q, so on credit computed in the sandbox.
    short = {"steps": 300, "eval_interval": 300, "eval_episodes": 2, "batch_size": 4, "envs": 2}
    result = train(preset("qllm", task="matrix-climbing", tfcaf=str(outcome.artifact), **short), tmp_path)
    assert result.t_env >= 300


def test_a_function_with_negative_weights_fails_the_monotonicity_check(tmp_path: Path) -> None:
    coder = scripted([NEGATIVE, NEGATIVE, FAVOURS_AGENT_0, FAVOURS_AGENT_0])
    outcome = generate(tmp_path, coder, scripted([evaluation(choice=1)]), mode="function")
    attempts = outcome.state.candidates[0].attempts
    assert [a.result.error_kind for a in attempts] == [ErrorKind.NOT_MONOTONIC, ErrorKind.NOT_MONOTONIC]


def test_the_contract_names_every_slice_of_the_state() -> None:
    info = make_env("mpe-tag").info
    text = column_slices(NamedState.for_task(info).schema)
    assert "`agent_position = state[:, 0:6].reshape(-1, 3, 2)`: 3 predators, (x, y) each." in text
    assert "`prey_position = state[:, 12:14]`: one prey: (x, y). The prey's position" in text
    assert text.count("\n") == len(info.schema.fields) - 1


def test_a_credit_floor_is_refused_in_function_mode_where_no_template_could_apply_it() -> None:
    with pytest.raises(SettingsError, match="credit_floor is part of the template"):
        settings(mode="function", credit_floor=0.25)

"""StateSchema: layout arithmetic, packing, views and serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qllm.envs import StateField, StateSchema


def make_schema() -> StateSchema:
    return StateSchema(
        (
            StateField("agent_position", "agent", 3, ("row", "col"), "cell", low=0, high=9),
            StateField("agent_level", "agent", 3, ("level",), "level", low=1, high=2),
            StateField("velocity", "agent", 2, ("vx", "vy"), "unbounded"),
        )
    )


def test_offsets_tile_the_state_in_order() -> None:
    schema = make_schema()
    assert [f.slice for f in schema] == [slice(0, 6), slice(6, 9), slice(9, 13)]
    assert schema.size == 13
    assert schema["agent_level"].shape == (3, 1)


def test_pack_then_view_round_trips_numpy_and_torch() -> None:
    schema = make_schema()
    values = {
        "agent_position": np.arange(6).reshape(3, 2),
        "agent_level": [[1], [2], [1]],
        "velocity": np.full((2, 2), -0.5),
    }
    state = schema.pack(values)
    assert state.dtype == np.float32 and state.shape == (13,)
    np.testing.assert_array_equal(schema.view(state, "agent_position"), values["agent_position"])
    batch = torch.from_numpy(np.stack([state, state * 2]))
    view = schema.view(batch, "agent_level")
    assert view.shape == (2, 3, 1)
    assert view[1, 1, 0].item() == 4.0
    assert set(schema.unpack(batch)) == {"agent_position", "agent_level", "velocity"}


def test_pack_rejects_missing_extra_and_misshapen_fields() -> None:
    schema = make_schema()
    good = {"agent_position": np.zeros((3, 2)), "agent_level": np.ones((3, 1)), "velocity": np.zeros((2, 2))}
    with pytest.raises(ValueError, match="missing"):
        schema.pack({k: v for k, v in good.items() if k != "velocity"})
    with pytest.raises(ValueError, match="unexpected"):
        schema.pack({**good, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"expects shape \(3, 1\)"):
        schema.pack({**good, "agent_level": np.ones((1, 3))})


def test_view_rejects_states_of_another_size() -> None:
    with pytest.raises(ValueError, match="last dimension 12"):
        make_schema().view(np.zeros((4, 12)), "velocity")


def test_unknown_field_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="agent_level"):
        make_schema()["food"]


def test_json_round_trip_keeps_unbounded_ranges() -> None:
    schema = make_schema()
    text = schema.to_json()
    assert "Infinity" not in text  # strict JSON: unbounded ends are null
    again = StateSchema.from_json(text)
    assert again == schema
    assert math.isinf(again["velocity"].low) and again["velocity"].low < 0


def test_from_dict_rejects_a_wrong_declared_size() -> None:
    data = make_schema().to_dict()
    data["size"] = 99
    with pytest.raises(ValueError, match="size 99"):
        StateSchema.from_dict(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "not an identifier"}, "identifier"),
        ({"count": 0}, "at least one"),
        ({"features": ()}, "at least one"),
        ({"low": 2.0, "high": 1.0}, "low 2.0 > high 1.0"),
    ],
)
def test_invalid_fields_are_rejected(kwargs: dict, message: str) -> None:
    base = {"name": "x", "entity": "agent", "count": 1, "features": ("a",), "meaning": "m"}
    with pytest.raises(ValueError, match=message):
        StateField(**{**base, **kwargs})


def test_duplicate_and_empty_schemas_are_rejected() -> None:
    field = StateField("x", "agent", 1, ("a",), "m")
    with pytest.raises(ValueError, match="duplicate"):
        StateSchema((field, field))
    with pytest.raises(ValueError, match="at least one field"):
        StateSchema(())

"""FusedAdam: torch.optim.Adam(fused=True)'s updates and state layout, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from qllm.rl.optim import FusedAdam


def _network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.GRUCell(8, 4))


def _train(network: nn.Module, optimiser: FusedAdam | torch.optim.Adam, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(3, 5, generator=generator)
        loss = network(x).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def _parameters(network: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in network.parameters()]


def test_updates_equal_torch_adam_fused_bit_for_bit() -> None:
    ours, theirs = _network(0), _network(0)
    _train(ours, FusedAdam(ours.parameters(), lr=1e-2), steps=20, seed=1)
    _train(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True), steps=20, seed=1)
    for mine, reference in zip(_parameters(ours), _parameters(theirs), strict=True):
        assert torch.equal(mine, reference)
    assert not torch.equal(_parameters(ours)[0], _parameters(_network(0))[0])  # it did move


def test_checkpoints_continue_bit_for_bit_from_torch_adam_and_back() -> None:
    """Saved by torch.optim.Adam, continued by FusedAdam (whose own settings the saved ones replace), saved
    again and continued by torch.optim.Adam: the same parameters as torch's uninterrupted run."""
    settings = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "fused": True}
    reference, resumed = _network(0), _network(0)
    reference_adam = torch.optim.Adam(reference.parameters(), **settings)
    _train(reference, reference_adam, steps=5, seed=1)
    resumed.load_state_dict(reference.state_dict())
    ours = FusedAdam(resumed.parameters(), lr=0.5)
    ours.load_state_dict(reference_adam.state_dict())
    assert (ours.lr, ours.betas, ours.eps) == (1e-2, (0.8, 0.99), 1e-6)
    _train(reference, reference_adam, steps=5, seed=2)
    _train(resumed, ours, steps=5, seed=2)
    for mine, theirs in zip(_parameters(resumed), _parameters(reference), strict=True):
        assert torch.equal(mine, theirs)
    back = torch.optim.Adam(resumed.parameters(), lr=1.0, fused=True)
    back.load_state_dict(ours.state_dict())
    _train(reference, reference_adam, steps=5, seed=3)
    _train(resumed, back, steps=5, seed=3)
    for mine, theirs in zip(_parameters(resumed), _parameters(reference), strict=True):
        assert torch.equal(mine, theirs)


def test_a_parameter_without_a_gradient_keeps_its_value_and_gets_no_state() -> None:
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimiser = FusedAdam([used, unused], lr=0.1)
    used.sum().backward()
    optimiser.step()
    assert torch.equal(unused.detach(), torch.ones(2))
    assert not torch.equal(used.detach(), torch.ones(2))
    assert list(optimiser.state_dict()["state"]) == [0]


def test_state_for_other_parameters_or_another_rule_is_refused() -> None:
    network = _network(0)
    other = torch.optim.Adam([nn.Parameter(torch.zeros(2))], lr=1e-3, fused=True)
    with pytest.raises(ValueError, match="for 1 parameters"):
        FusedAdam(network.parameters(), lr=1e-3).load_state_dict(other.state_dict())
    stranger = FusedAdam(network.parameters(), lr=1e-3).state_dict()
    stranger["state"][99] = stranger["state"].get(0, {})
    with pytest.raises(ValueError, match="unlisted parameters"):
        FusedAdam(network.parameters(), lr=1e-3).load_state_dict(stranger)
    decaying = torch.optim.Adam(network.parameters(), lr=1e-3, weight_decay=0.1, amsgrad=True)
    with pytest.raises(ValueError, match="weight_decay, amsgrad"):
        FusedAdam(network.parameters(), lr=1e-3).load_state_dict(decaying.state_dict())


def test_a_learner_update_imports_no_compiler() -> None:
    """The reason this class exists: torch.optim imports torch._dynamo (1.15 s, 71 MB) on first use."""
    program = (
        "import sys, torch\n"
        "from qllm.rl.optim import FusedAdam\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "o = FusedAdam([p], lr=0.1)\n"
        "p.sum().backward(); o.step(); o.zero_grad(); o.load_state_dict(o.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["qmix", "maddpg"])
def test_a_training_run_with_a_checkpoint_imports_no_compiler(name: str, tmp_path: Path) -> None:
    """A whole run, resumed from its checkpoint, in a fresh process: nothing in it imports torch._dynamo."""
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from qllm.rl import preset, train\n"
        f"config = preset({name!r}, task='matrix-climbing', steps=60, batch_size=2, eval_interval=30,\n"
        "                eval_episodes=1, checkpoint_interval=30, hidden_dim=8)\n"
        f"run = train(config, runs_dir=Path({str(tmp_path)!r})).run_dir\n"
        "train(config.replace(steps=90), resume=run)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"

"""Every preset trains end to end on every environment family, on a tiny budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qllm.rl import PRESETS, preset, train
from qllm.rl.train import FINAL_MODEL

TASKS = ("matrix-penalty-25", "mpe-spread-3", "lbf-5x5-2p-1f", "rware-tiny-2ag")
VDN_FILE = "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"


@pytest.fixture(scope="module")
def tfcaf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tfcaf") / "vdn.py"
    path.write_text(VDN_FILE)
    return path


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_trains_on_family(name: str, task: str, tmp_path: Path, tfcaf_file: Path) -> None:
    limit = 500 if task.startswith("rware") else 50
    overrides = {
        "steps": 2 * limit, "envs": 2, "batch_size": 2, "buffer_size": 8, "eval_interval": 10**9,
        "eval_episodes": 1, "checkpoint_interval": 10**9, "log_interval": 1, "hidden_dim": 16,
        "tfcaf": str(tfcaf_file) if PRESETS[name]["mixer"] == "tfcaf" else None,
    }  # fmt: skip
    result = train(preset(name, task=task, **overrides), runs_dir=tmp_path)
    assert result.t_env >= 2 * min(limit, 25)
    assert (result.run_dir / FINAL_MODEL).is_file() and result.plot.is_file()
    metrics = (result.run_dir / "metrics.csv").read_text()
    assert "losses/loss" in metrics, "no gradient step happened"
    model = torch.load(result.run_dir / FINAL_MODEL)
    assert all(torch.isfinite(v).all() for v in model["agent"].values())

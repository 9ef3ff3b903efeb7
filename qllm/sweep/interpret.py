"""What a trained TFCAF run's credit function does: the weight each agent gets over one episode.

The run's trained agents play a few greedy episodes, and the one with the highest return is kept: an
episode in which the team scores shows what the weights do around the rewards. The credit function,
computed as in training (from the spec for a compiled credit spec, else through the sandbox), gives
``w_i(s_t)`` and ``b(s_t)`` at every state they visit. Weights are the gradient of ``Q_tot`` with respect
to each agent's Q (and ``b`` its value at ``Q = 0``): exactly the function's weights when it is linear in
Q, as every template-made function is; for any other function, its weights at ``Q = 0``. The plot puts
them above what happened: the team reward and each agent's action.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qllm.envs import EnvInfo
from qllm.rl.credit import SandboxCredit, SpecCredit
from qllm.rl.evaluation import EVAL_SEED_OFFSET
from qllm.rl.runner import GREEDY, ParallelRunner
from qllm.rl.tfcaf import TFCAFFile, read_tfcaf, validate_tfcaf
from qllm.rl.train import load_trained_agent
from qllm.sandbox import Sandbox

EPISODES = 8
"""Greedy episodes played to pick the one shown."""


@dataclass(frozen=True)
class CreditEpisode:
    """One greedy episode of a trained run with the credit each agent received at each step."""

    task: str
    agent_names: tuple[str, ...]
    action_names: tuple[str, ...]
    weights: np.ndarray
    """``[T, n]``: ``w_i(s_t)``, the weight of agent i's Q at the state before step t."""
    bias: np.ndarray
    """``[T]``: ``b(s_t)``."""
    actions: np.ndarray
    """``[T, n]``: the action each agent took at step t."""
    rewards: np.ndarray
    """``[T]``: the team reward of step t."""

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())


def credit_episode(run_dir: Path, credit_file: Path, episodes: int = EPISODES) -> CreditEpisode:
    """The best of ``episodes`` greedy episodes of ``run_dir``'s agents (reset with the evaluation
    seeds), weighed with the credit function in ``credit_file``."""
    config, agent, device = load_trained_agent(run_dir)
    runner = ParallelRunner(config.task, episodes)
    try:
        seeds = [EVAL_SEED_OFFSET + e for e in range(episodes)]
        batch, rollout = runner.run(agent, seeds, GREEDY, torch.Generator(), device)
    finally:
        runner.close()
    best = max(range(episodes), key=lambda e: rollout.returns[e])
    batch = batch[best : best + 1]
    info = runner.info
    steps = int(batch.filled[0].sum())
    values = credit_of(read_tfcaf(credit_file, info), info, config.tfcaf_monotonic, batch.state[0, :steps])
    weights, bias = values[:, : info.n_agents], values[:, info.n_agents]
    return CreditEpisode(
        task=config.task,
        agent_names=info.agent_names,
        action_names=info.action_names,
        weights=weights.numpy(),
        bias=bias.numpy(),
        actions=batch.actions[0, :steps].numpy(),
        rewards=batch.reward[0, :steps].numpy(),
    )


def credit_of(file: TFCAFFile, info: EnvInfo, monotonic: bool, states: torch.Tensor) -> torch.Tensor:
    """Each state's ``[w, b]`` as training computes it: from the spec for a compiled credit spec; else in
    the sandbox, which validates the function first (``w(s) = dQ_tot/dQ`` and ``b(s)`` at ``Q = 0``,
    exact for functions linear in Q)."""
    if file.spec is not None:
        return SpecCredit(file.source, file.spec)(states)
    with Sandbox(spares=False) as sandbox:  # one worker validates the function, then computes its credit
        tfcaf = validate_tfcaf(file, info, monotonic=monotonic, sandbox=sandbox)
        credit = SandboxCredit(tfcaf.source, info.n_agents, monotonic=monotonic, sandbox=sandbox)
        with closing(credit):
            return credit(states)


def plot_credit_episode(episode: CreditEpisode, out: Path, title: str) -> Path:
    """Weights per agent over the episode, above the team reward and the agents' actions."""
    import matplotlib  # noqa: PLC0415 - plotting is the report's business, loaded only for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: PLC0415

    steps = np.arange(len(episode.rewards))
    n_actions = len(episode.action_names)
    fig, (top, middle, bottom) = plt.subplots(
        3,
        1,
        figsize=(9, 6.5),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1.2, 0.4 * len(episode.agent_names) + 0.8]},
    )
    for i, name in enumerate(episode.agent_names):
        top.plot(steps, episode.weights[:, i], marker=".", label=f"w({name})")
    top.set_ylabel("credit weight w_i(s_t)")
    top.legend(loc="best", fontsize="small", ncols=min(4, len(episode.agent_names)))
    top.grid(alpha=0.3)
    top.set_title(title)
    middle.bar(steps, episode.rewards, color="tab:green")
    middle.set_ylabel("team\nreward")
    middle.grid(alpha=0.3)
    colours = ListedColormap(plt.get_cmap("tab10").colors[:n_actions])
    image = bottom.imshow(
        episode.actions.T,
        aspect="auto",
        interpolation="nearest",
        cmap=colours,
        norm=BoundaryNorm(np.arange(n_actions + 1) - 0.5, n_actions),
        extent=(-0.5, len(steps) - 0.5, len(episode.agent_names) - 0.5, -0.5),
    )
    bottom.set_yticks(range(len(episode.agent_names)), episode.agent_names)
    bottom.set_xlabel("step t of the episode")
    bar = fig.colorbar(
        image, ax=bottom, orientation="horizontal", pad=0.45, aspect=50, ticks=range(n_actions)
    )
    bar.ax.set_xticklabels(episode.action_names, fontsize="small")
    bar.set_label("action")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

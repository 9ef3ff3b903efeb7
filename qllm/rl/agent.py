"""The agent network shared by every agent: observation, last action and agent id in, one output per
action: Q-values for the value-based learners, policy logits for the actor-critic ones (their actor).

A GRU gives each agent a memory of its own history (EPyMARL's ``RNNAgent``). The same weights serve
two callers: the runner steps it one time step at a time for a batch of environments (through an
:class:`Actor`), and the learner runs it over whole padded episodes (the inputs of every step are known
in advance, so nothing forces a Python loop over time): on CPU through the compiled recurrence of
:mod:`qllm.rl.kernels`, elsewhere (or where that cannot be built) through ``nn.GRU``.

Acting on CPU runs the network in numpy (:class:`NumpyActor`). At acting's sizes (2 to 16 rows) the
arithmetic is a few microseconds and the cost is per operator: torch's step is about 80 microseconds
whoever calls its dozen operators (a compiled operator making the same ATen calls saved 5), numpy's
about 30, on every environment step. The numbers agree with torch's to float rounding (a few 1e-7),
not bit for bit.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qllm.envs import EnvInfo
from qllm.envs.episodes import Episodes
from qllm.rl import kernels
from qllm.rl.config import TrainConfig


def agent_inputs(obs: torch.Tensor, last_actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """``obs [..., n, O]`` and ``last_actions [..., n]`` (-1 for none) -> ``[..., n, O + A + n]``."""
    n_agents = obs.shape[-2]
    previous = F.one_hot(last_actions.clamp(min=0), n_actions).to(obs.dtype) * (last_actions >= 0).unsqueeze(
        -1
    )
    ids = torch.eye(n_agents, dtype=obs.dtype, device=obs.device).expand(*obs.shape[:-1], n_agents)
    return torch.cat([obs, previous, ids], dim=-1)


def episode_inputs(batch: Episodes, n_actions: int) -> torch.Tensor:
    """Inputs for every state of a batch of padded episodes: ``[B, T+1, n, D]`` (no last action at first)."""
    last_actions = torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], dim=1)
    return agent_inputs(batch.obs, last_actions, n_actions)


class RNNAgent(nn.Module):
    """fc -> ReLU -> GRU -> fc, shared across agents."""

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def initial_hidden(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_dim, device=device)

    def actor(self, rows: int, device: torch.device) -> Actor:
        """A stepper for ``rows`` agents (all agents of all environments) from a zero hidden state, with
        the weights as they are now: numpy on CPU, torch on ``device`` elsewhere."""
        if device.type == "cpu":
            return NumpyActor(self, rows)
        return TorchActor(self, rows, device)

    def step(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``inputs [E, n, D]``, ``hidden [E*n, H]`` -> ``q [E, n, A]``, new hidden.

        The GRU's own weights through the single-step kernel: the same numbers as a one-step ``nn.GRU``
        call (bit for bit on CPU), at a third of its cost for the small batches of acting."""
        e, n, d = inputs.shape
        x = F.relu(self.fc1(inputs.reshape(e * n, d)))
        rnn = self.rnn
        hidden = torch.gru_cell(x, hidden, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        return self.fc2(hidden).view(e, n, -1), hidden

    def unroll(self, inputs: torch.Tensor) -> torch.Tensor:
        """Whole episodes from a zero hidden state: ``inputs [B, T, n, D]`` -> ``q [B, T, n, A]``."""
        if inputs.device.type == "cpu" and kernels.available():
            return self._unroll_compiled(inputs)
        b, t, n, d = inputs.shape
        x = F.relu(self.fc1(inputs.permute(0, 2, 1, 3).reshape(b * n, t, d)))
        out, _ = self.rnn(x)
        return self.fc2(out).view(b, n, t, -1).permute(0, 2, 1, 3)

    def _unroll_compiled(self, inputs: torch.Tensor) -> torch.Tensor:
        # Time-major, as the recurrence steps: [T, B*n, *]. The input side of the gates is one product
        # for every step at once; only the hidden side needs the loop over time.
        b, t, n, d = inputs.shape
        x = F.relu(self.fc1(inputs.transpose(0, 1).reshape(t, b * n, d)))
        rnn = self.rnn
        gates_in = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
        hidden = kernels.gru_recurrence(gates_in, rnn.weight_hh_l0, rnn.bias_hh_l0)
        return self.fc2(hidden).view(t, b, n, -1).transpose(0, 1)


class Actor(Protocol):
    """Steps the agent network for acting, one time step of every environment at a time, keeping the
    hidden state between steps."""

    def step(self, inputs: np.ndarray) -> torch.Tensor:
        """``inputs [E, n, D]`` (float32) -> outputs ``[E, n, A]`` on the CPU."""
        ...


class TorchActor:
    """:meth:`RNNAgent.step` on ``device`` (a GPU: acting's inputs and outputs cross to it each step)."""

    def __init__(self, agent: RNNAgent, rows: int, device: torch.device) -> None:
        self.agent, self.device = agent, device
        self.hidden = agent.initial_hidden(rows, device)

    @torch.no_grad()
    def step(self, inputs: np.ndarray) -> torch.Tensor:
        outputs, self.hidden = self.agent.step(torch.from_numpy(inputs).to(self.device), self.hidden)
        return outputs.cpu()


class NumpyActor:
    """The network's step in numpy, on views of its CPU weights (not copies: the learner changes them in
    place only between rollouts, and an actor lives for one rollout). The maths of
    :meth:`RNNAgent.step`, ``torch.nn.GRU``'s gates in its order; sigmoid as ``(1 + tanh(x / 2)) / 2``,
    which cannot overflow."""

    def __init__(self, agent: RNNAgent, rows: int) -> None:
        fc_in, rnn, fc_out = agent.fc1, agent.rnn, agent.fc2
        self.w_in, self.b_in = _view(fc_in.weight).T, _view(fc_in.bias)
        self.w_ih, self.b_ih = _view(rnn.weight_ih_l0).T, _view(rnn.bias_ih_l0)
        self.w_hh, self.b_hh = _view(rnn.weight_hh_l0).T, _view(rnn.bias_hh_l0)
        self.w_out, self.b_out = _view(fc_out.weight).T, _view(fc_out.bias)
        self.units = agent.hidden_dim
        self.hidden = np.zeros((rows, agent.hidden_dim), dtype=np.float32)

    def step(self, inputs: np.ndarray) -> torch.Tensor:
        e, n, d = inputs.shape
        h, units = self.hidden, self.units
        x = inputs.reshape(e * n, d) @ self.w_in
        x += self.b_in
        np.maximum(x, 0.0, out=x)
        gi = x @ self.w_ih
        gi += self.b_ih
        gh = h @ self.w_hh
        gh += self.b_hh
        reset_update = gi[:, : 2 * units] + gh[:, : 2 * units]
        reset_update *= 0.5
        np.tanh(reset_update, out=reset_update)
        reset_update *= 0.5
        reset_update += 0.5
        new = gh[:, 2 * units :] * reset_update[:, :units]
        new += gi[:, 2 * units :]
        np.tanh(new, out=new)
        h = h - new  # h' = n + z * (h - n), in torch's order
        h *= reset_update[:, units:]
        h += new
        self.hidden = h
        outputs = h @ self.w_out
        outputs += self.b_out
        return torch.from_numpy(outputs.reshape(e, n, -1))


def _view(parameter: torch.Tensor) -> np.ndarray:
    return parameter.detach().numpy()


def build_agent(config: TrainConfig, info: EnvInfo) -> RNNAgent:
    return RNNAgent(info.obs_dim + info.n_actions + info.n_agents, info.n_actions, config.hidden_dim)

"""Learners: the protocol every algorithm implements, the pieces they share, and Q-learning.

A :class:`Learner` owns its networks and optimisers; the training loop (``train.py``) only collects
episodes with the learner's acting network and behaviour, hands them to ``update`` and saves
``state_dict``. Three implement it: :class:`QLearner` here (IQL, VDN, QMIX, Qatten, TFCAF),
:class:`~qllm.rl.coma.COMALearner` and :class:`~qllm.rl.maddpg.MADDPGLearner`. They share TD(lambda)
targets, reward standardisation, target networks and the clipped gradient step below.

``QLearner.update`` is one gradient step on a batch of episodes:

1. unroll the online and target agent networks over the whole episodes (``T + 1`` states); where the
   second core is free meanwhile, the target network's on a second thread while this one unrolls the
   online network (the GRU kernels release the GIL, so the two use both cores; each is the same
   single-threaded computation as in line, so the numbers are bit for bit the same). Then the training
   loop may start collecting its next batch (``after_unroll``), beside the rest of the update;
2. pick next actions with the online network among available actions (double Q), evaluate them with
   the target network, and mix them with the target mixer into state values ``V[t]``;
3. build TD(lambda) targets from rewards, terminal flags and ``V`` (:func:`td_lambda_targets`);
4. minimise the squared TD error of the online mixer's ``Q_tot`` over the real (``filled``) steps only.

A NaN or infinity in ``Q_tot``, a target, the loss or the gradient norm raises :class:`NonFiniteError`
before any parameter changes (:func:`require_finite`): training on it would ruin every network silently.
A mixer that reads each state's stored credit instead of the state (:class:`~qllm.rl.mixers.LinearCredit`)
gets ``batch.credit``; while the sandbox is still computing the credit of the newest states, ``update``'s
``pending_credit`` is waited for only once both networks are unrolled, so that the two run side by side.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from qllm.envs.episodes import Episodes
from qllm.rl.agent import RNNAgent, episode_inputs
from qllm.rl.config import TrainConfig
from qllm.rl.mixers import Mixer
from qllm.rl.optim import FusedAdam
from qllm.rl.runner import ActionSelector, EpsilonGreedy

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from qllm.rl.credit import Credit


class Learner(Protocol):
    """What the training loop needs from an algorithm."""

    agent: RNNAgent
    """The acting network (Q-values or policy logits): rollouts, evaluation and the final model use it."""
    on_policy: ClassVar[bool]
    """Learn once from the episodes just collected (no replay buffer) instead of from replay."""
    credit: Credit | None
    """What labels each collected state with its credit (a credit function linear in Q, from its credit
    spec or computed in the sandbox) for the replay buffer, while the update it is stored for runs; None
    when the learner needs no credit (always, for an on-policy learner: the credit lives in the replay
    buffer)."""

    def behaviour(self, t_env: int) -> ActionSelector:
        """How to act while collecting training episodes after ``t_env`` environment steps."""
        ...

    def update(
        self,
        batch: Episodes,
        new_episodes: int,
        pending_credit: Callable[[], torch.Tensor] | None = None,
        after_unroll: Callable[[], None] | None = None,
    ) -> DataclassInstance:
        """Learn from ``batch``; ``new_episodes`` were collected since the last call. ``pending_credit``,
        given only to a learner with a :attr:`credit`: the batch's credit, which is not in ``batch.credit``
        (the newest states' is still being computed), called when it is needed. ``after_unroll``, if given,
        is called once, before any parameter changes, when the learner has unrolled its networks: the
        training loop starts collecting its next batch there, to run beside the rest of the update (the
        backward pass, on one core); until then the machine's second core is the learner's. Returns scalar
        diagnostics (a dataclass), logged under ``losses/``."""
        ...

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks by name (``agent`` first), saved as the run's final model."""
        ...

    def state_dict(self) -> dict[str, object]: ...

    def load_state_dict(self, state: dict[str, object]) -> None: ...

    def close(self) -> None:
        """Release what the learner holds besides its networks (a thread, say); the training loop calls
        it when the run ends, however it ends."""
        ...


def td_lambda_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """Lambda-returns ``G[t] = r[t] + gamma (1 - term[t]) ((1 - lambda) V[t+1] + lambda G[t+1])``.

    ``rewards, terminated, filled [B, T]``; ``values [B, T+1, k]`` (value of the state before each step
    and after the last). Where step ``t+1`` did not happen (the episode ended at ``t``), ``G[t+1]`` is
    replaced by ``V[t+1]``: a truncated episode bootstraps from its last state, a terminated one gets
    no bootstrap at all. Returns ``[B, T, k]`` on ``values``' device; entries of unfilled steps are
    meaningless (masked later). Targets carry no gradient: for ``td_lambda > 0`` none flows through the
    recursion (the learners compute them under ``torch.no_grad()`` anyway).

    The terms that do not depend on ``G[t+1]`` are computed for every step at once; only the recursion
    itself loops over time, in numpy on the CPU: a torch operator costs 3-5 microseconds to call, numpy's
    about one, and a loop of ten torch operators per step was 2.2-3.3 ms of each ``riit`` update (50
    steps, batch 128), against 0.4 ms now. Each step's sums and products are the same float32 operations,
    in the same order, as those of the formula above, so the targets are the same bit for bit.
    """
    r, term = rewards.unsqueeze(-1), terminated.unsqueeze(-1)
    following_values = values[:, 1:]  # V[t+1]
    if td_lambda == 0.0:  # one-step targets need no recursion over time
        return r + gamma * (1 - term) * following_values
    next_filled = torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1).unsqueeze(-1)
    with torch.no_grad():
        terms = [
            next_filled,  # where G[t+1] exists
            (1 - next_filled) * following_values,  # ... and V[t+1] where it does not
            (1 - td_lambda) * following_values,
            gamma * (1 - term),
            r,
        ]
        last_value = values[:, -1]
    stay, ended, bootstrap, discount, reward = (term.cpu().numpy() for term in terms)
    following = last_value.cpu().numpy()
    targets = np.empty(ended.shape, dtype=following.dtype)  # [B, T, k], as values[:, 1:]
    weight = following.dtype.type(td_lambda)  # the float32 torch multiplies by, whatever type it came as
    for t in range(rewards.shape[1] - 1, -1, -1):
        continuation = stay[:, t] * following + ended[:, t]
        blended = bootstrap[:, t] + weight * continuation
        targets[:, t] = reward[:, t] + discount[:, t] * blended
        following = targets[:, t]
    return torch.from_numpy(targets).to(values.device)


class RunningMeanStd:
    """Running statistics of rewards for standardisation (parallel Welford update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        batch_mean, batch_var, n = float(values.mean()), float(values.var(unbiased=False)), values.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / (self.var**0.5 + 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` (broadcastable, 0/1 or bool) is set."""
    mask = mask.expand_as(values)
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum() / mask.sum()


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` (same shape, 0/1) is set."""
    # Padded steps hold arbitrary values (and targets built from them): select, never multiply.
    error = torch.where(mask.bool(), prediction - target, torch.zeros_like(prediction))
    return error.pow(2).sum() / mask.sum()


class NonFiniteError(RuntimeError):
    """A NaN or infinity in a quantity of an update; the update is not applied."""

    def __init__(self, quantity: str, count: int, total: int) -> None:
        super().__init__(f"{quantity} is NaN or infinite ({count} of {total} values)")
        self.quantity = quantity


def require_finite(quantity: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise :class:`NonFiniteError` naming ``quantity`` if any of ``values`` (where ``mask`` is set, for
    padded episodes) is NaN or infinite: training on it would silently ruin every network it reaches."""
    if mask is not None:
        values = values[mask.expand_as(values).bool()]
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise NonFiniteError(quantity, int((~finite).sum()), values.numel())


def gradient_step(
    optimiser: FusedAdam, loss: torch.Tensor, parameters: Iterable[nn.Parameter], clip: float
) -> float:
    """Backpropagate ``loss``, clip the gradient norm of ``parameters`` and step; returns the norm.
    A non-finite loss or gradient norm raises :class:`NonFiniteError` before any parameter changes."""
    require_finite("the loss", loss)
    optimiser.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
    require_finite("the gradient norm", grad_norm)
    optimiser.step()
    return float(grad_norm)


class TargetNetworks:
    """Frozen copies of online networks, kept in step as the config says: a hard copy every
    ``target_update_interval`` episodes, or a soft (Polyak) update by ``tau`` after every update."""

    def __init__(self, config: TrainConfig, *online: nn.Module) -> None:
        self.config, self.online = config, online
        self.networks = tuple(copy.deepcopy(m).requires_grad_(False) for m in online)
        self.episodes_since_update = 0

    def update(self, new_episodes: int) -> None:
        if self.config.target_update == "soft":
            tau = self.config.tau
            for online, target in zip(self.online, self.networks, strict=True):
                for p, tp in zip(online.parameters(), target.parameters(), strict=True):
                    tp.mul_(1 - tau).add_(p.detach(), alpha=tau)
            return
        self.episodes_since_update += new_episodes
        if self.episodes_since_update >= self.config.target_update_interval:
            for online, target in zip(self.online, self.networks, strict=True):
                target.load_state_dict(online.state_dict())
            self.episodes_since_update = 0

    def state_dict(self) -> dict[str, object]:
        return {
            "networks": [t.state_dict() for t in self.networks],
            "episodes_since_update": self.episodes_since_update,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        for target, saved in zip(self.networks, state["networks"], strict=True):
            target.load_state_dict(saved)
        self.episodes_since_update = int(state["episodes_since_update"])


def epsilon_at(config: TrainConfig, t_env: int) -> float:
    """Linearly annealed exploration rate of epsilon-greedy acting."""
    fraction = min(1.0, t_env / max(1, config.epsilon_anneal_steps))
    return config.epsilon_start + fraction * (config.epsilon_finish - config.epsilon_start)


@dataclass(frozen=True)
class UpdateStats:
    loss: float
    grad_norm: float
    q_taken_mean: float
    target_mean: float


class QLearner:
    """Owns the online and target networks and the optimiser."""

    on_policy: ClassVar[bool] = False

    def __init__(
        self,
        agent: RNNAgent,
        mixer: Mixer,
        n_actions: int,
        config: TrainConfig,
        credit: Credit | None = None,
    ) -> None:
        if mixer.reads_credit and credit is None:
            raise ValueError(f"the {type(mixer).__name__} mixer needs the credit of each state")
        self.agent, self.mixer, self.n_actions, self.config = agent, mixer, n_actions, config
        self.credit = credit
        self.targets = TargetNetworks(config, agent, mixer)
        self.target_agent, self.target_mixer = self.targets.networks
        self.parameters = [*agent.parameters(), *mixer.parameters()]
        self.optimiser = FusedAdam(self.parameters, config.lr)
        self.reward_stats = RunningMeanStd()
        self._target_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qllm-target-unroll")
        """Unrolls the target agent network while the caller unrolls the online one, where the second core
        is free (:meth:`second_core_free`)."""

    def behaviour(self, t_env: int) -> EpsilonGreedy:
        return EpsilonGreedy(epsilon_at(self.config, t_env))

    def networks(self) -> dict[str, nn.Module]:
        return {"agent": self.agent, "mixer": self.mixer}

    def update(
        self,
        batch: Episodes,
        new_episodes: int,
        pending_credit: Callable[[], torch.Tensor] | None = None,
        after_unroll: Callable[[], None] | None = None,
    ) -> UpdateStats:
        """One gradient step; ``new_episodes`` collected since the last call drive hard target updates;
        ``after_unroll`` is called once both agent networks are unrolled."""
        if self.config.standardise_rewards:
            self.reward_stats.update(batch.reward[batch.filled.bool()])
        loss, stats = self.loss(batch, pending_credit, after_unroll)
        grad_norm = gradient_step(self.optimiser, loss, self.parameters, self.config.grad_clip)
        self.targets.update(new_episodes)
        return UpdateStats(loss=float(loss.detach()), grad_norm=grad_norm, **stats)

    def loss(
        self,
        batch: Episodes,
        pending_credit: Callable[[], torch.Tensor] | None = None,
        after_unroll: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The masked mean squared TD error of ``Q_tot`` against TD(lambda) targets (and diagnostics);
        calls ``after_unroll`` (the training loop's request for its next batch) once both agent networks
        are unrolled."""
        cfg = self.config
        rewards = self.reward_stats.standardise(batch.reward) if cfg.standardise_rewards else batch.reward
        inputs = episode_inputs(batch, self.n_actions)  # [B, T+1, n, D]
        beside = self.second_core_free(after_unroll)
        target_q = self._target_thread.submit(self._target_unroll, inputs) if beside else None
        q = self.agent.unroll(inputs)  # [B, T+1, n, A]
        target = target_q.result() if target_q else self._target_unroll(inputs)
        if after_unroll is not None:
            after_unroll()
        q_taken = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)  # [B, T, n]
        # The credit last: both unrolls above are time the sandbox has to compute the newest states'.
        mixing = self._mixing(batch, pending_credit)  # [B, T+1, S or n+1]
        q_tot = self.mixer(q_taken, mixing[:, :-1])  # [B, T, k]
        mask = batch.filled.unsqueeze(-1).expand_as(q_tot)
        require_finite("Q_tot", q_tot.detach(), mask)
        with torch.no_grad():
            values = self._state_values(q.detach(), target, batch, mixing)  # [B, T+1, k]
            targets = td_lambda_targets(
                rewards, batch.terminated, batch.filled, values, gamma=cfg.gamma, td_lambda=cfg.td_lambda
            )
            require_finite("the TD target", targets, mask)
        loss = masked_mse(q_tot, targets, mask)
        with torch.no_grad():
            stats = {
                "q_taken_mean": float((q_tot * mask).sum() / mask.sum()),
                "target_mean": float(torch.where(mask.bool(), targets, 0.0).sum() / mask.sum()),
            }
        return loss, stats

    def close(self) -> None:
        """End the target network's unroll thread (idle between updates): a trainer that goes on in this
        process (a sweep's, a test's) forks its next collector with no thread of this one left."""
        self._target_thread.shutdown()

    def second_core_free(self, after_unroll: Callable[[], None] | None) -> bool:
        """Whether the machine's second core is free while the networks unroll: collecting in line (the
        collection waits for the update), or with the collection ahead asked for only after the unroll.
        A collection running beside the unrolls has that core; a third busy thread made the updates 10%
        slower (20k steps of ``qmix`` on lbf-8x8-2p-2f, 2 cores)."""
        return not self.config.collect_ahead or after_unroll is not None

    def _mixing(self, batch: Episodes, pending_credit: Callable[[], torch.Tensor] | None) -> torch.Tensor:
        """What the mixer reads of each state: its credit (waited for if still being computed), or itself."""
        if not self.mixer.reads_credit:
            return batch.state
        return batch.credit if pending_credit is None else pending_credit()

    @torch.no_grad()
    def _target_unroll(self, inputs: torch.Tensor) -> torch.Tensor:
        # no_grad here, not inherited: grad mode is per thread, and this runs on the target thread.
        return self.target_agent.unroll(inputs)

    def _state_values(
        self, q: torch.Tensor, target_q: torch.Tensor, batch: Episodes, mixing: torch.Tensor
    ) -> torch.Tensor:
        """``V[t]``: the target mixer over the target network's value of each state's next action."""
        target_q = target_q.masked_fill(~batch.avail_actions, -torch.inf)
        if self.config.double_q:
            best = q.masked_fill(~batch.avail_actions, -torch.inf).argmax(dim=-1, keepdim=True)
            chosen = target_q.gather(-1, best).squeeze(-1)
        else:
            chosen = target_q.max(dim=-1).values
        # Padded states have no available action (-inf everywhere): they are never used, zero them.
        chosen = torch.where(torch.isfinite(chosen), chosen, torch.zeros_like(chosen))
        return self.target_mixer(chosen, mixing)

    def state_dict(self) -> dict[str, object]:
        return {
            "agent": self.agent.state_dict(),
            "mixer": self.mixer.state_dict(),
            "target_agent": self.target_agent.state_dict(),
            "target_mixer": self.target_mixer.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
            "episodes_since_target_update": self.targets.episodes_since_update,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.mixer.load_state_dict(state["mixer"])
        self.target_agent.load_state_dict(state["target_agent"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.targets.episodes_since_update = int(state["episodes_since_target_update"])

"""Cooperative matrix games: two agents, three actions, one shared payoff, repeated for an episode.

These are the classic stress tests of value decomposition (non-monotonic payoffs that VDN and QMIX
cannot represent). The game is played ``episode_limit`` times in a row (25, as in EPyMARL); the global
state is the one-hot of the previous joint action (all zeros at the first step). Payoffs:

- climbing (Claus & Boutilier 1998): ``[[11, -30, 0], [-30, 7, 0], [0, 6, 5]]``
- penalty-k (k in 0..100): ``[[-k, 0, 10], [0, 2, 0], [10, 0, -k]]``
- qtran, the non-monotonic game of the QTRAN paper (Son et al. 2019):
  ``[[8, -12, -12], [-12, 0, 0], [-12, 0, 0]]``
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from qllm.envs.contract import EnvInfo, MultiAgentEnv
from qllm.envs.probes import Probe, zero_values
from qllm.envs.schema import StateField, StateSchema
from qllm.envs.tasks import TaskFamily, TaskNameError, TaskSpec

EPISODE_LIMIT = 25
N_AGENTS = 2
MAX_PENALTY = 100
TRIAL_STEPS = 1_000
"""Trial budget (see :mod:`qllm.agents.trial`): 40 episodes, enough for the greedy joint action to settle."""

CLIMBING = ((11, -30, 0), (-30, 7, 0), (0, 6, 5))
QTRAN = ((8, -12, -12), (-12, 0, 0), (-12, 0, 0))


def penalty_payoff(k: int) -> tuple[tuple[int, ...], ...]:
    return ((-k, 0, 10), (0, 2, 0), (10, 0, -k))


class MatrixGame(MultiAgentEnv):
    """A repeated two-player cooperative matrix game with a shared payoff."""

    def __init__(self, task: str, payoff: tuple[tuple[int, ...], ...], episode_limit: int = EPISODE_LIMIT):
        self.payoff = np.asarray(payoff, dtype=np.float32)
        n_actions = self.payoff.shape[0]
        schema = StateSchema(
            (
                StateField(
                    name="last_joint_action",
                    entity="previous joint action",
                    count=1,
                    features=tuple(f"a0={i},a1={j}" for i in range(n_actions) for j in range(n_actions)),
                    meaning=(
                        "one-hot of the joint action played at the previous step: entry a0*3+a1 is 1 where "
                        "agent 0 played a0 and agent 1 played a1; all zeros at the first step"
                    ),
                    low=0.0,
                    high=1.0,
                ),
            )
        )
        super().__init__(
            EnvInfo(
                task=task,
                n_agents=N_AGENTS,
                n_actions=n_actions,
                obs_dim=schema.size,
                episode_limit=episode_limit,
                agent_names=("agent_0", "agent_1"),
                action_names=tuple(f"action_{i}" for i in range(n_actions)),
                schema=schema,
            )
        )

    def _reset(self, seed: int | None) -> None:
        """The game has no randomness: every episode starts from the all-zeros state."""

    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        return float(self.payoff[actions[0], actions[1]]), False, {}

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The base class tracks per-agent one-hots; the joint one-hot is their outer product.
        joint = np.outer(self._last_action[0], self._last_action[1]).reshape(1, -1)
        state = self._pack_state({"last_joint_action": joint})
        obs = np.broadcast_to(state, (self.info.n_agents, state.size)).copy()
        avail = np.ones((self.info.n_agents, self.info.n_actions), dtype=bool)
        return obs, state, avail


def probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """After a miscoordinated joint action from which exactly one agent can reach an optimum by changing
    its own action: that agent over the other."""
    if not isinstance(env, MatrixGame):
        raise TypeError(f"matrix-game probes need a MatrixGame, got {type(env).__name__}")
    payoff, schema = env.payoff, env.info.schema
    optima = [tuple(int(x) for x in o) for o in np.argwhere(payoff == payoff.max())]

    def reaches_alone(agent: int, joint: tuple[int, int]) -> bool:
        other = 1 - agent
        return any(joint[other] == o[other] and joint[agent] != o[agent] for o in optima)

    for joint in itertools.product(range(payoff.shape[0]), range(payoff.shape[1])):
        can_reach = [agent for agent in (0, 1) if reaches_alone(agent, joint)]
        if len(can_reach) != 1:
            continue
        v = zero_values(schema)
        v["last_joint_action"][0, joint[0] * payoff.shape[1] + joint[1]] = 1
        agent = can_reach[0]
        name = f"after joint action {joint}: only agent {agent} can reach an optimum by changing its action"
        yield Probe(name, schema.pack(v), agent, 1 - agent)


def _spec(name: str, title: str, payoff: tuple[tuple[int, ...], ...], origin: str) -> TaskSpec:
    rows = "; ".join(f"agent 0 plays {i}: {list(row)}" for i, row in enumerate(payoff))
    return TaskSpec(
        name=name,
        family="matrix",
        summary=f"{title}: 2 agents, 3 actions, repeated {EPISODE_LIMIT} times",
        description=(
            f"{title} ({origin}). Two agents each choose one of 3 actions at every step, simultaneously, and "
            f"the team receives the payoff of the joint action. The game repeats for {EPISODE_LIMIT} steps. "
            f"Payoff matrix, row = agent 0's action, column = agent 1's action: {rows}. "
            "The optimum needs both agents to coordinate on one joint action; miscoordination is punished."
        ),
        team="agent_0 and agent_1, both controlled",
        reward="the payoff of the joint action, shared by both agents",
        factory=partial(MatrixGame, name, payoff),
        probes=probes,
        trial_steps=TRIAL_STEPS,
    )


def parse(name: str) -> TaskSpec | None:
    if name == "matrix-climbing":
        return _spec(name, "Climbing game", CLIMBING, "Claus & Boutilier 1998")
    if name == "matrix-qtran":
        return _spec(name, "Non-monotonic QTRAN game", QTRAN, "Son et al. 2019, QTRAN")
    match = re.fullmatch(r"matrix-penalty-(\d+)", name)
    if match:
        k = int(match.group(1))
        if k > MAX_PENALTY:
            raise TaskNameError(f"penalty k must be in 0..{MAX_PENALTY}, got {k}")
        return _spec(
            f"matrix-penalty-{k}", f"Penalty game with k={k}", penalty_payoff(k), "Claus & Boutilier 1998"
        )
    return None


def names() -> list[str]:
    return ["matrix-climbing", "matrix-qtran", *(f"matrix-penalty-{k}" for k in (0, 25, 50, 75, 100))]


FAMILY = TaskFamily(
    key="matrix",
    title="Cooperative matrix games",
    patterns=("matrix-climbing", "matrix-penalty-<k> (k in 0..100)", "matrix-qtran"),
    parse=parse,
    names=names,
    examples=("matrix-climbing", "matrix-penalty-100", "matrix-qtran"),
)

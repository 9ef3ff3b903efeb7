# qllm-tfcaf: {"task": "coordgrid-5x5-2ag", "state_dim": 6, "n_agents": 2, "template": "credit-spec/v1", "credit_floor": 0.0}
"""Credit function for coordgrid-5x5-2ag, candidate r2-c0 (attempt 0) of run coordgrid-5x5-2ag__tfcaf__0__20261201-151345, written by local:qwen2.5-coder-1.5b-instruct."""

import math

import torch

N_AGENTS = 2
CREDIT_FLOOR = 0.0

# --- written by the coder LLM -------------------------------------------------------------

def quantity_0(s, i):
    # goal_distance: distance from agent i to the goal
    return s["agent_to_goal_distance"][i]


def relative(s, i, quantity):
    """Where agent i stands in the team on one quantity: in [-1, 1], 0 when all agents are equal."""
    values = [quantity(s, j) for j in range(N_AGENTS)]
    mean = sum(values) / len(values)
    spread = max(abs(v - mean) for v in values)
    return 0.0 if spread == 0 else (values[i] - mean) / spread


def agent_weight(s, i):
    """Credit spec written by the coder LLM, compiled by qllm template credit-spec/v1:

    more credit to agents with the lowest goal_distance (strong)

    Reasoning: The team's value should share credit with agents who are closer to the goal because
    these agents have the highest chance of earning the team reward. Agents further away from the
    goal will receive less credit, and the weight assigned to each
    """
    score = 0.0
    score -= 2.0 * relative(s, i, quantity_0)
    return math.exp(score)


def state_bias(s):
    return 0.0

# --- generated from the task's state schema (qllm template agent-weight/v1) ------------

def named_state(row):
    """One global state (a list of 6 numbers) as named Python values."""
    s = {}
    s["agent_position"] = [tuple(row[0 + j * 2:0 + (j + 1) * 2]) for j in range(2)]
    s["goal_position"] = tuple(row[4:6])
    s["agent_to_goal_distance"] = [manhattan(a, s["goal_position"]) for a in s["agent_position"]]
    return s


def distance(a, b):
    """Straight-line distance between two points given as tuples."""
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def manhattan(a, b):
    """Grid steps between two cells given as tuples."""
    return sum(abs(x - y) for x, y in zip(a, b))


def argmax(values):
    """Index of the largest value."""
    best = 0
    for j in range(len(values)):
        if values[j] > values[best]:
            best = j
    return best

def checked_weight(s, i):
    w = agent_weight(s, i)
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise TypeError("agent_weight(s, %d) must return one number, got %r" % (i, w))
    if not math.isfinite(w):
        raise ValueError("agent_weight(s, %d) returned %r: it must be a finite number" % (i, w))
    return max(0.0, float(w))


def normalised_weights(s):
    w = [checked_weight(s, i) for i in range(N_AGENTS)]
    total = sum(w)
    if total <= 0.0:
        return [1.0] * N_AGENTS
    # Every agent keeps at least CREDIT_FLOOR of the equal share (1), so that none is starved of gradient.
    return [CREDIT_FLOOR + (1.0 - CREDIT_FLOOR) * x * N_AGENTS / total for x in w]


def checked_bias(s):
    b = state_bias(s)
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        raise ValueError("state_bias(s) must return one finite number, got %r" % (b,))
    return float(b)


def credit_assignment(agents_q, state):
    """Q_tot = sum_i w_i(s) Q_i + b(s), with w_i from agent_weight (clamped >= 0, summing to N_AGENTS)."""
    weights = []
    biases = []
    for row in state.tolist():
        s = named_state(row)
        weights.append(normalised_weights(s))
        biases.append(checked_bias(s))
    w = torch.tensor(weights, dtype=agents_q.dtype, device=agents_q.device)
    b = torch.tensor(biases, dtype=agents_q.dtype, device=agents_q.device)
    return (w * agents_q).sum(dim=1, keepdim=True) + b.unsqueeze(1)

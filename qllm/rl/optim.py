"""Adam for the learners, without ``torch.optim``: the same fused update, and no compiler imported.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (``torch.compile``'s front end) the first time an
optimiser is built, and again checks for it in every ``step``. No learner here compiles anything, yet
that import took 1.15 s and 71 MB of the trainer's memory in every run (torch 2.13 on this project's
2-core machines; ``reports/training-speed/report.md``, twelfth measurement), paid before the trainer asks
for its first batch.

:class:`FusedAdam` makes the call ``torch.optim.Adam(fused=True)`` makes, the ``torch._fused_adam_``
operator (one kernel for all the tensors of a device and dtype), with the same arguments and the same
state, so updates are bit for bit those of ``torch.optim.Adam(fused=True)`` (a test compares them).
Its ``state_dict`` has ``torch.optim.Adam``'s layout, so checkpoints saved before it existed resume.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BETAS = (0.9, 0.999)
EPS = 1e-8
"""``torch.optim.Adam``'s defaults, which every learner here uses."""


@dataclass
class _AdamState:
    """One parameter's Adam state (its update count and moments), as ``torch.optim.Adam(fused=True)``
    keeps it."""

    step: torch.Tensor
    """Updates so far: a float32 scalar on the parameter's device (the fused kernel reads it there)."""
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor

    @classmethod
    def zeros(cls, parameter: torch.Tensor) -> _AdamState:
        return cls(
            step=torch.zeros((), dtype=torch.float32, device=parameter.device),
            exp_avg=torch.zeros_like(parameter, memory_format=torch.preserve_format),
            exp_avg_sq=torch.zeros_like(parameter, memory_format=torch.preserve_format),
        )

    @classmethod
    def loaded(cls, saved: dict[str, torch.Tensor], parameter: torch.Tensor) -> _AdamState:
        """A saved state, on the parameter's device and (for the moments) its dtype."""
        for name, value in (("exp_avg", saved["exp_avg"]), ("exp_avg_sq", saved["exp_avg_sq"])):
            if value.shape != parameter.shape:
                raise ValueError(
                    f"the saved optimiser state's {name} has shape {tuple(value.shape)}, "
                    f"its parameter {tuple(parameter.shape)}"
                )
        like = {"device": parameter.device, "dtype": parameter.dtype}
        return cls(
            step=torch.as_tensor(saved["step"], dtype=torch.float32).to(parameter.device).clone(),
            exp_avg=saved["exp_avg"].to(**like).clone(),
            exp_avg_sq=saved["exp_avg_sq"].to(**like).clone(),
        )

    def as_saved(self) -> dict[str, torch.Tensor]:
        return {"step": self.step, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}


class FusedAdam:
    """Adam over one group of parameters (no weight decay, no AMSGrad), updated by the fused kernel.

    Like ``torch.optim.Adam``, a parameter gets its state on its first update with a gradient, and one
    without a gradient (``grad`` None) is left as it is.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], lr: float) -> None:
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("FusedAdam needs at least one parameter")
        self.lr = lr
        self.betas = BETAS
        self.eps = EPS
        self.states: dict[int, _AdamState] = {}
        """Each updated parameter's state, by its index in ``parameters``."""

    def zero_grad(self) -> None:
        """Forget every gradient (``torch.optim``'s ``zero_grad(set_to_none=True)``)."""
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter with a gradient: one kernel per device and dtype."""
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for index, parameter in enumerate(self.parameters):
            if parameter.grad is not None:
                groups.setdefault((parameter.device, parameter.dtype), []).append(index)
        for indices in groups.values():
            params = [self.parameters[i] for i in indices]
            states = [self._state_of(i) for i in indices]
            steps = [state.step for state in states]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                [p.grad for p in params],
                [state.exp_avg for state in states],
                [state.exp_avg_sq for state in states],
                [],  # the running maxima AMSGrad would keep
                steps,
                amsgrad=False,
                lr=self.lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=0.0,
                eps=self.eps,
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )

    def _state_of(self, index: int) -> _AdamState:
        """The parameter's state, made (zeros) on its first update."""
        state = self.states.get(index)
        if state is None:
            state = self.states[index] = _AdamState.zeros(self.parameters[index])
        return state

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim.Adam``'s layout (the tensors themselves, not copies, as there)."""
        group = {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": 0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": True,
            "decoupled_weight_decay": False,
            "params": list(range(len(self.parameters))),
        }
        saved = {index: state.as_saved() for index, state in sorted(self.states.items())}
        return {"state": saved, "param_groups": [group]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: this class's, or ``torch.optim.Adam``'s for the same parameters.

        As in ``torch.optim``, the saved learning rate, betas and eps replace this optimiser's. State
        this update rule cannot continue (weight decay, AMSGrad, maximising, several groups) is refused
        with a ValueError, and so is state for other parameters."""
        groups = state["param_groups"]
        if len(groups) != 1:
            raise ValueError(f"the saved optimiser state has {len(groups)} parameter groups, FusedAdam one")
        group = groups[0]
        unsupported = [
            name
            for name, value in (
                ("weight_decay", group.get("weight_decay", 0)),
                ("amsgrad", group.get("amsgrad", False)),
                ("maximize", group.get("maximize", False)),
                ("decoupled_weight_decay", group.get("decoupled_weight_decay", False)),
            )
            if value
        ]
        if unsupported:
            raise ValueError(f"the saved optimiser state uses {', '.join(unsupported)}: FusedAdam has none")
        if len(group["params"]) != len(self.parameters):
            raise ValueError(
                f"the saved optimiser state is for {len(group['params'])} parameters, this one has "
                f"{len(self.parameters)}"
            )
        position = {saved_id: index for index, saved_id in enumerate(group["params"])}
        strangers = set(state["state"]) - set(position)
        if strangers:
            raise ValueError(f"the saved optimiser state holds unlisted parameters {sorted(strangers)}")
        self.states = {
            position[saved_id]: _AdamState.loaded(saved, self.parameters[position[saved_id]])
            for saved_id, saved in state["state"].items()
        }
        self.lr, self.eps = float(group["lr"]), float(group["eps"])
        self.betas = (float(group["betas"][0]), float(group["betas"][1]))

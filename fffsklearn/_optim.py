"""The trainer's optimizer: Adam with a coupled L2 weight decay per parameter group.

Its interface, in the manner of scikit-learn's ``_stochastic_optimizers``: :meth:`step`
updates the parameters from their gradients, :meth:`set_weight_decay` sets the decay of the
step to come, and the phase that hardens the routing reads and edits ``param_groups`` (each a
dict with ``lr``) and clears ``state`` as it does for torch's optimizers. The CUDA-graph
capture reads :meth:`learning_rates` and :meth:`moment_tensors`.
"""

import torch


class FusedAdam:
    """Adam with L2 weight decay per parameter group: one fused kernel per group and step.

    The update is that of ``torch.optim.Adam(fused=True)``, whose kernel it calls. The weight
    decay is Adam's (coupled) one, which adds ``weight_decay * w`` to the gradient: the
    gradient of the penalty ``0.5 * weight_decay * ||w||^2``, as in scikit-learn's MLP. What it
    leaves out is torch.optim's per-step machinery (hooks, grouping tensors by device and
    dtype, capturable and differentiable modes), which cost a noticeable share of a small
    training step on a CPU. A parameter whose ``grad`` is None is skipped.

    Parameters
    ----------
    param_groups : list of dict
        Each with ``params`` (tensors) and ``decay_factor``: the group's share of the weight
        decay that :meth:`set_weight_decay` sets (0 for none).
    lr : float
    betas : (float, float), default=(0.9, 0.999)
    eps : float, default=1e-8
    """

    def __init__(self, param_groups, lr, betas=(0.9, 0.999), eps=1e-8):
        self.param_groups = [
            {"lr": lr, "weight_decay": 0.0, **group, "params": list(group["params"])}
            for group in param_groups
        ]
        self.betas, self.eps = betas, eps
        self.state = {}

    def set_weight_decay(self, decay):
        """The L2 weight decay of the next steps: ``decay`` times each group's factor."""
        for group in self.param_groups:
            group["weight_decay"] = decay * group["decay_factor"]

    @torch.no_grad()
    def step(self):
        """Update every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = self._advance(params)
            torch._fused_adam_(
                params, [p.grad for p in params], [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states], [],
                [state["step"] for state in states], lr=group["lr"], beta1=beta1, beta2=beta2,
                weight_decay=group["weight_decay"], eps=self.eps, amsgrad=False, maximize=False,
            )

    def _advance(self, params):
        """The moment states of ``params`` for the step about to be taken: created (zero)
        where missing, their step counts incremented."""
        fresh = [p for p in params if p not in self.state]
        if fresh:
            # Parameters whose moments start together share one step count, so that a
            # step increments one tensor, not one per parameter.
            count = torch.zeros((), device=fresh[0].device)
            for p in fresh:
                self.state[p] = {
                    "step": count, "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }
        states = [self.state[p] for p in params]
        for count in {id(state["step"]): state["step"] for state in states}.values():
            count += 1
        return states

    def learning_rates(self):
        """The learning rate of each group, in order."""
        return tuple(group["lr"] for group in self.param_groups)

    def decayed_groups(self):
        """``(decay_factor, parameters that train)`` of each group with a weight decay."""
        for group in self.param_groups:
            weights = [w for w in group["params"] if w.requires_grad]
            if group["decay_factor"] and weights:
                yield group["decay_factor"], weights

    def moment_tensors(self):
        """Every tensor of the moment estimates."""
        return [tensor for state in self.state.values() for tensor in state.values()]

    def has_moments(self):
        """Whether every parameter that trains has its moment estimates (a first step makes
        them)."""
        return all(p in self.state for group in self.param_groups
                   for p in group["params"] if p.requires_grad)

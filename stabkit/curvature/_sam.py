"""Sharpness-aware minimisation (SAM) as a wrapper around any torch optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stabkit._checks import check_positive_float


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation: descend with the gradient taken at the worst nearby point.

    One SAM step: ``g = ∇L(w)``; ``e = ρ · T² g / ‖T g‖`` (``T = I``, or ``T = diag|w|`` when ``adaptive``);
    ``w ← w + e``; ``g' = ∇L(w + e)``; ``w ← w − e``; then the base optimizer steps with ``g'``.

    Use it either with :meth:`step` and a closure (what :func:`stabkit.train.fit` does — the closure zeroes
    the gradients, computes the loss, backpropagates and returns the loss; it is evaluated twice), or by hand
    with :meth:`first_step` / :meth:`second_step` around two forward-backward passes.

    Note [BatchNorm in the second pass]: the second forward pass runs at the perturbed weights ``w + e``; in
    training mode, BatchNorm would fold that pass's batch statistics into its running statistics, so every
    batch would be counted twice, once at weights the model never has. When ``model`` is given, :meth:`step`
    saves all of the model's buffers before the second pass and restores them after it, so the running
    statistics (and ``num_batches_tracked``) are exactly those of plain training. The batch statistics *used*
    in the second pass are still those of the batch, as in the SAM paper. By hand, wrap the second pass in
    :meth:`frozen_buffers`.

    Args:
        base_optimizer: the optimizer that takes the actual step (e.g. ``torch.optim.SGD(model.parameters(),
            ...)``); SAM shares its parameter groups, so learning-rate changes on either are seen by both.
        model: the network whose buffers (BatchNorm statistics) must not change in the second pass; required
            for correct statistics whenever the network has BatchNorm.
        rho: neighbourhood radius ``ρ > 0`` (0.05 is the usual value; ASAM uses larger, e.g. 0.5–2).
        adaptive: scale the perturbation by ``|w|`` element-wise (ASAM).

    Example:
        >>> import torch.nn.functional as F
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
        >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), model=model, rho=0.05)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = F.cross_entropy(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)  # the loss at w, before the step
        >>> bool(F.cross_entropy(model(x), y) < loss)
        True

    With :func:`stabkit.train.fit`, pass ``optimizer=opt``: it builds the closure.

    References:
        P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021 (arXiv 2010.01412); J. Kwon et al., "ASAM", ICML 2021 (arXiv 2102.11600).
        Thesis arXiv:2510.25282, ch. 5.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        *,
        model: nn.Module | None = None,
        rho: float = 0.05,
        adaptive: bool = False,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        if isinstance(base_optimizer, SAM):
            raise ValueError("base_optimizer is already a SAM optimizer")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        check_positive_float("rho", rho)
        self.base_optimizer = base_optimizer
        self.model = model
        # the groups are the base optimizer's own dicts: one lr, seen by both
        super().__init__(base_optimizer.param_groups, dict(rho=float(rho), adaptive=bool(adaptive)))
        self.param_groups = base_optimizer.param_groups

    def _perturbation_norm(self) -> torch.Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                scale = p.abs() if group["adaptive"] else 1.0
                norms.append(torch.linalg.vector_norm(scale * p.grad))
        if not norms:
            raise ValueError("no parameter has a gradient: call backward() before first_step()")
        return torch.linalg.vector_norm(torch.stack(norms))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + e`` using the current gradients, remembering ``w``."""
        norm = self._perturbation_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)  # 1e-12: a zero gradient gives e = 0, not NaN
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()  # exact restore: w + e − e ≠ w in floats
                e = (p.pow(2) if group["adaptive"] else 1.0) * p.grad * scale
                p.add_(e)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to ``w`` and let the base optimizer step with the gradients computed at ``w + e``."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.copy_(self.state[p].pop("old_p"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    class _FrozenBuffers:
        def __init__(self, model: nn.Module | None) -> None:
            self.model = model

        def __enter__(self) -> None:
            self.saved = [] if self.model is None else [(b, b.clone()) for b in self.model.buffers()]

        def __exit__(self, *exc: object) -> None:
            with torch.no_grad():
                for b, saved in self.saved:
                    b.copy_(saved)

    def frozen_buffers(self) -> SAM._FrozenBuffers:
        """Context manager restoring the model's buffers on exit (see Note [BatchNorm in the second pass])."""
        return SAM._FrozenBuffers(self.model)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One full SAM step; ``closure`` is evaluated twice. Returns the loss of the first evaluation (at
        ``w``)."""
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure (zero grads, forward, backward, return loss); "
                "or call first_step() and second_step() yourself"
            )
        with torch.enable_grad():
            loss = closure()
        self.first_step()
        with torch.enable_grad(), self.frozen_buffers():
            closure()
        self.second_step()
        # detached: the graph of the first pass is no longer needed, and float() of a graph tensor warns
        return loss.detach() if isinstance(loss, torch.Tensor) else loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (SAM keeps no state between steps)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:  # a state saved from the bare base optimizer lacks SAM's keys
            group.setdefault("rho", self.defaults["rho"])
            group.setdefault("adaptive", self.defaults["adaptive"])

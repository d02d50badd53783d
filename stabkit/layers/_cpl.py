"""Convex potential layers (CPL): ``x − (2/‖A‖²) Aᵀ relu(A x + b)``.

Note [CPL norm]
---------------
The layer is 1-Lipschitz iff the step ``h = 2/(σ̂² + ε)`` satisfies ``h‖A‖₂² ≤ 2``, i.e. iff ``σ̂² + ε ≥
‖A‖₂²``. The papers (Meunier et al. 2022, official code) estimate ``‖A‖₂`` by power iteration: one step per
training step on a persistent vector, and 100 steps for evaluation. Power iteration converges to ‖A‖₂ *from
below*, so its estimate can be too small (slow convergence when σ1 ≈ σ2, or a start nearly orthogonal to the
top singular vector), and the ``ε = 1e−4`` only covers an error ``‖A‖² − σ̂² ≤ 1e−4``. For convolutions the
paper's power iteration also runs at one input size, while the norm of a zero-padded convolution grows with
the size.

What we do:

* **Training** (``module.training``): as the papers, one power-iteration step per forward pass on the
  persistent buffer ``u`` (under ``no_grad``); ``σ̂ = ‖A u‖`` carries the gradient. For convolutions the
  iteration runs on a fixed ``n_grid × n_grid`` circular grid, so the buffer has a fixed shape and the
  estimate does not depend on the batch's image size.
* **Evaluation**: ``σ̂`` is a *certified upper bound* of ‖A‖₂, valid for every input size, so the eval-mode
  layer is 1-Lipschitz whatever the power iteration did: :func:`stabkit.norms.spectral_norm_upper` (dense) and
  :func:`stabkit.norms.conv_grid_bound` (convolutions; proof in Note [grid bound] of ``stabkit/norms/_grid.py``).
  The bound is cached with a copy of the weight it was computed from and recomputed whenever the weight's
  values differ from that copy (however they were changed: optimizer steps, fused or not, ``.data`` writes,
  ``load_state_dict``, dtype or device moves). The cache lives outside the module's state (not a buffer, left
  out of pickles), so the eval forward mutates nothing that ``torch.func.functional_call`` sees; when the
  layer is called with other weights (``functional_call``, ``torch.func`` transforms) the bound is computed
  from those weights.

Consequence: the eval-mode step ``h`` is a little smaller than the training one (by the gap between the power
iteration and the certified bound), which is the price of a guarantee that holds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_float, check_positive_int, is_transformed, resolve_generator
from stabkit.norms import conv_grid_bound, spectral_norm_upper
from stabkit.norms._grid import _pilot_radius

from ._common import fan_in_bound, normal_, pair_odd, uniform_
from ._export import residual_conv, residual_linear


class _CPLBase(nn.Module):
    lipschitz = 1.0

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant of the eval-mode layer: 1 (Note [CPL norm]; train mode: none)."""
        return 1.0

    def _cached_bound(self) -> torch.Tensor:
        # Note [CPL bound cache]: the cache is keyed on the weight's *values* (a stored copy compared with
        # torch.equal), not on `weight._version` or the Parameter's identity: fused optimizers, `.data` writes,
        # `vector_to_parameters`, EMA updates and `load_state_dict(assign=True)` change the values without
        # bumping the version counter. The comparison is one pass over the weight, far cheaper than the bound.
        w = self.weight
        cache = self.__dict__.get("_bound_cache")
        if (
            cache is not None
            and not is_transformed(w)
            and cache[0].dtype == w.dtype
            and cache[0].device == w.device
            and cache[0].shape == w.shape
            and torch.equal(cache[0], w.detach())
        ):
            return cache[1]
        # a bound made under inference_mode could not be used later in a graph: compute it outside of it
        with torch.inference_mode(False):
            bound = self._norm_bound(w)
            # store only for the module's own weight (not for weights passed by functional_call / transforms)
            if isinstance(w, nn.Parameter) and not is_transformed(w):
                bound = bound.detach()
                self.__dict__["_bound_cache"] = (w.detach().clone(), bound)
        return bound

    def __getstate__(self) -> dict:
        # the cache is derived data: pickling (torch.save(model), multiprocessing spawn) leaves it out
        state = self.__dict__.copy()
        state.pop("_bound_cache", None)
        return state

    def norm_bound(self) -> torch.Tensor:
        """Certified upper bound of ‖A‖₂ used in eval mode (recomputed whenever the weight's values change)."""
        return self._cached_bound()

    def step_size(self) -> torch.Tensor:
        """The step ``h = 2/(σ̂² + eps)`` of the current mode (training: power iteration; eval: certified)."""
        return self._step(self._power_step() if self.training else self._cached_bound())

    def _step(self, sigma: torch.Tensor) -> torch.Tensor:
        # A = 0 (e.g. zero initialisation) has σ̂ = 0, and with eps = 0 the step would be 2/0: every step is valid for
        # A = 0, so take σ̂ = 1 there (an upper bound of ‖A‖ = 0), which keeps the output and its gradient finite
        sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        return 2.0 / (sigma * sigma + self.eps)

    def _power_step(self) -> torch.Tensor:
        """One power-iteration step on the buffer ``u``; returns ``‖A u‖`` with gradient through A."""
        w = self.weight
        with torch.no_grad():
            u = self._normalize(self._op_adjoint(self._op(self.u, w.detach()), w.detach()))
            if not is_transformed(w) and not is_transformed(self.u):
                self.u.copy_(u)
        return torch.linalg.vector_norm(self._op(u, w))

    @staticmethod
    def _normalize(u: torch.Tensor) -> torch.Tensor:
        return u / torch.linalg.vector_norm(u).clamp_min(1e-30)


class CPLLinear(_CPLBase):
    r"""Convex potential dense layer: ``h(x) = x − (2/σ̂²) Aᵀ relu(A x + b)``; 1-Lipschitz in ℓ2 (eval mode).

    ``A`` (inner_features × features) is learned; ``σ̂`` estimates ‖A‖₂ by one power-iteration step per
    training step and is a certified upper bound in eval mode (Note [CPL norm] in this module: the papers'
    power iteration is a lower estimate and does not guarantee 1-Lipschitz by itself). The layer is an
    explicit Euler step of the gradient flow of a convex potential, hence 1-Lipschitz when ``h‖A‖² ≤ 2``.

    Args:
        features: width of the input and the output.
        inner_features: width of the hidden pre-activation (default: ``features``).
        bias: whether to learn the inner bias.
        eps: added to σ̂² in ``h = 2/(σ̂² + eps)`` (the papers' 1e−4).
        generator: random generator for the weights and the power-iteration start (``None`` = seeded 0).

    Shape:
        (*, features) → (*, features).

    References:
        Meunier, Delattre, Araujo, Allauzen, *A Dynamical System Perspective for Lipschitz Neural Networks*,
        ICML 2022, arXiv 2110.12690 (thesis ch. 4).
    """

    def __init__(
        self,
        features: int,
        inner_features: int | None = None,
        bias: bool = True,
        *,
        eps: float = 1e-4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.inner_features = check_positive_int(
            "inner_features", features if inner_features is None else inner_features
        )
        self.eps = check_positive_float("eps", eps, allow_zero=True)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_features, features, **kw))
        self.bias = nn.Parameter(torch.empty(self.inner_features, **kw)) if bias else None
        self.register_buffer("u", torch.empty(features, **kw))
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        g = resolve_generator(generator, self.weight.device)
        normal_(self.weight, math.sqrt(2.0 / (self.features + self.inner_features)), g)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(self.features), g)
        normal_(self.u, 1.0, g)
        with torch.no_grad():
            self.u.copy_(self._normalize(self.u))

    @staticmethod
    def _op(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w @ u

    @staticmethod
    def _op_adjoint(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w.T @ v

    def _norm_bound(self, w: torch.Tensor) -> torch.Tensor:
        return spectral_norm_upper(w)

    def export(self) -> nn.Module:
        """Plain torch form of the **eval-mode** layer (certified step), a ``torch.fx.GraphModule``."""
        w_out = (self.weight * self._step(self._cached_bound())).detach()
        return residual_linear(self.weight.detach(), None if self.bias is None else self.bias.detach(), w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(F.linear(x, self.weight, self.bias))  # (*, inner)
        return x - z @ (self.weight * self.step_size())

    def extra_repr(self) -> str:
        return f"{self.features}, inner_features={self.inner_features}, bias={self.bias is not None}"


class CPLConv2d(_CPLBase):
    r"""Convex potential convolutional layer; 1-Lipschitz in ℓ2 for every input size (eval mode).

    ``h(x) = x − h · conv_transpose2d(relu(conv2d(x, K) + b), K)`` with ``h = 2/(σ̂² + eps)``, zero padding
    ``k // 2``. Training: one circular power-iteration step per forward pass on an ``n_grid × n_grid`` buffer.
    Eval: ``σ̂`` is a certified bound valid for every input size (Note [CPL norm] in this module).

    Args:
        channels: channels of the input and the output.
        inner_channels: channels of the hidden pre-activation (default: ``channels``).
        kernel_size: odd int or pair of odd ints.
        bias: whether to learn the inner bias.
        eps: added to σ̂² (the papers' 1e−4).
        n_grid: size of the circular grid of the training power iteration.
        n_eval: size of the DFT grid of the certified eval bound (Note [CPL norm]).
        generator: random generator for the weights and the power-iteration start (``None`` = seeded 0).

    Shape:
        (B, channels, H, W) → (B, channels, H, W).

    References:
        Meunier et al., ICML 2022, arXiv 2110.12690 (thesis ch. 4).
    """

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        kernel_size: int | tuple[int, int] = 3,
        bias: bool = True,
        *,
        eps: float = 1e-4,
        n_grid: int = 16,
        n_eval: int = 32,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.inner_channels = check_positive_int(
            "inner_channels", channels if inner_channels is None else inner_channels
        )
        self.kernel_size = pair_odd("kernel_size", kernel_size)
        self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        self.eps = check_positive_float("eps", eps, allow_zero=True)
        self.n_grid = check_positive_int("n_grid", n_grid, minimum=max(self.kernel_size))
        self.n_eval = check_positive_int("n_eval", n_eval, minimum=2 * max(self.kernel_size))
        try:  # reject now what the eval bound would reject at certification time (its own check)
            _pilot_radius(self.n_eval, *self.kernel_size)
        except ValueError as err:
            raise ValueError(f"n_eval={n_eval} cannot be used by the certified eval bound: {err}") from None
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_channels, channels, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(self.inner_channels, **kw)) if bias else None
        self.register_buffer("u", torch.empty(1, channels, n_grid, n_grid, **kw))
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        g = resolve_generator(generator, self.weight.device)
        kk = self.kernel_size[0] * self.kernel_size[1]
        normal_(self.weight, math.sqrt(2.0 / ((self.channels + self.inner_channels) * kk)), g)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(self.channels * kk), g)
        normal_(self.u, 1.0, g)
        with torch.no_grad():
            self.u.copy_(self._normalize(self.u))

    def _circular(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph), mode="circular")

    def _op(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._circular(u), w)  # (1, inner, N, N): circular conv on the grid

    def _op_adjoint(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # adjoint of a circular cross-correlation: cross-correlation with the flipped, transposed kernel
        return F.conv2d(self._circular(v), w.transpose(0, 1).flip(2, 3))

    def _norm_bound(self, w: torch.Tensor) -> torch.Tensor:
        return conv_grid_bound(w, n_samples=self.n_eval)

    def export(self) -> nn.Module:
        """Plain torch form of the **eval-mode** layer (certified step), a ``torch.fx.GraphModule``."""
        w_out = (self.weight * self._step(self._cached_bound())).detach()
        b = None if self.bias is None else self.bias.detach()
        return residual_conv(self.weight.detach(), b, w_out, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.padding))  # (B, inner, H, W)
        return x - F.conv_transpose2d(z, self.weight * self.step_size(), padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, n_grid={self.n_grid}, n_eval={self.n_eval}"
        )

"""SDP-based Lipschitz layers (SLL): residual layers ``x − 2 Aᵀ T⁻¹ relu(A x + b)`` with ``AAᵀ ⪯ T``.

With ``n_iter > 1`` the diagonal T comes from a Gram power (Note [Gram bound] in ``_common.py``): this is the
residual Spectral-Rescaling variant with learnable q of the thesis (arXiv:2510.25282, ch. 4), and ``n_iter = 1``
is SLL itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_int

from ._common import conv_gram_bound, fan_in_bound, gram_bound, normal_, pair_odd, uniform_, unit_scale
from ._export import residual_conv, residual_linear


class SLLLinear(nn.Module):
    r"""SDP-based Lipschitz dense residual layer: ``h(x) = x − 2 Aᵀ T⁻¹ relu(A x + b)``; 1-Lipschitz in ℓ2.

    ``A`` (inner_features × features) is the learned weight and ``T = diag(t)`` with the weighted Gershgorin
    bound ``t_i = Σ_j |AAᵀ|_ij q_j / q_i`` (``q = exp(log_q)`` learned), which satisfies ``AAᵀ ⪯ T``; Araujo
    et al. (2023, Thm 3) show that then ``h`` is 1-Lipschitz for any slope-restricted activation in [0, 1]
    (ReLU here). ``n_iter > 1`` uses the Gram power ``(AAᵀ)^(2^(n_iter−1))`` for a tighter T (the
    thesis' residual SR, arXiv:2510.25282 ch. 4).

    Args:
        features: width of the input and the output.
        inner_features: width of the hidden pre-activation (default: ``features``).
        bias: whether to learn the inner bias b.
        n_iter: Gram-power steps (1 = SLL).
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (*, features) → (*, features).

    References:
        Araujo, Havens, Delattre, Allauzen, Hu, *A Unified Algebraic Perspective on Lipschitz Neural
        Networks*, ICLR 2023, arXiv 2303.03169 (thesis ch. 4).
    """

    lipschitz = 1.0

    def __init__(
        self,
        features: int,
        inner_features: int | None = None,
        bias: bool = True,
        *,
        n_iter: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.inner_features = check_positive_int(
            "inner_features", features if inner_features is None else inner_features
        )
        self.n_iter = check_positive_int("n_iter", n_iter)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_features, features, **kw))  # A: (inner, features)
        self.bias = nn.Parameter(torch.empty(self.inner_features, **kw)) if bias else None
        self.log_q = nn.Parameter(torch.zeros(self.inner_features, **kw))
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Xavier-normal weight, torch's uniform bias, q = 1 (log_q = 0; the official code draws q ~ N(0, 1))."""
        normal_(self.weight, math.sqrt(2.0 / (self.features + self.inner_features)), generator)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(self.features), generator)
        with torch.no_grad():
            self.log_q.zero_()

    def gram_diagonal(self) -> torch.Tensor:
        """The diagonal ``t`` (inner_features,) of T, with ``AAᵀ ⪯ diag(t)``."""
        w, s = unit_scale(self.weight)
        return gram_bound(w @ w.T, n_iter=self.n_iter, log_q=self.log_q) * s**2

    def output_weight(self) -> torch.Tensor:
        """``2 T⁻¹ A`` (inner_features, features), the weight of the second product, computed scale-free."""
        w, s = unit_scale(self.weight)  # T is homogeneous of degree 2 in A: 2T⁻¹A = (2/t(A/s)) (A/s) / s
        return w * (2.0 / gram_bound(w @ w.T, n_iter=self.n_iter, log_q=self.log_q))[:, None] / s

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1 (Araujo et al. 2023, Thm 3)."""
        return 1.0

    def export(self) -> nn.Module:
        """Plain torch ``x + Linear(relu(Linear(x)))`` as a ``torch.fx.GraphModule`` (Note [export])."""
        b = None if self.bias is None else self.bias.detach()
        return residual_linear(self.weight.detach(), b, self.output_weight().detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(F.linear(x, self.weight, self.bias))  # (*, inner)
        # fold 2/t into the (small) weight rather than scaling the (large) activation
        return x - z @ self.output_weight()

    def extra_repr(self) -> str:
        return (
            f"{self.features}, inner_features={self.inner_features}, bias={self.bias is not None}, n_iter={self.n_iter}"
        )


class SLLConv2d(nn.Module):
    r"""SDP-based Lipschitz convolutional residual layer; 1-Lipschitz in ℓ2 for every input size.

    ``h(x) = x − conv_transpose2d(relu(conv2d(x, K) + b), K ⊙ 2/t)`` with ``K`` (inner_channels, channels,
    kh, kw), zero padding ``k // 2`` and ``t_i = Σ_{j,u,v} |G_ijuv| q_j / q_i`` where ``G = conv2d(K, K,
    padding=k − 1)`` is the kernel of the Gram operator ``KKᵀ`` (Note [Gram bound] in ``_common.py``). The
    Gram kernel is computed once per forward pass and the scale is folded into the kernel of the transposed
    convolution, so a training step does the two batch-sized convolutions (and their four backward ones) and
    nothing else of batch size.

    Args:
        channels: channels of the input and the output.
        inner_channels: channels of the hidden pre-activation (default: ``channels``).
        kernel_size: odd int or pair of odd ints.
        bias: whether to learn the inner bias.
        n_iter: Gram-power steps (1 = SLL; ``> 1`` = residual SR, thesis arXiv:2510.25282 ch. 4).
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (B, channels, H, W) → (B, channels, H, W).

    Raises:
        ValueError: even kernel size, non-positive sizes.

    References:
        Araujo et al., ICLR 2023, arXiv 2303.03169 (thesis ch. 4).
    """

    lipschitz = 1.0

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        kernel_size: int | tuple[int, int] = 3,
        bias: bool = True,
        *,
        n_iter: int = 1,
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
        self.n_iter = check_positive_int("n_iter", n_iter)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_channels, channels, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(self.inner_channels, **kw)) if bias else None
        self.log_q = nn.Parameter(torch.zeros(self.inner_channels, **kw))
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Xavier-normal kernel, torch's uniform bias, q = 1 (the official code draws q ~ N(0, 1))."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        normal_(self.weight, math.sqrt(2.0 / ((self.channels + self.inner_channels) * kk)), generator)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(self.channels * kk), generator)
        with torch.no_grad():
            self.log_q.zero_()

    def gram_diagonal(self) -> torch.Tensor:
        """The diagonal ``t`` (inner_channels,) with ``KKᵀ ⪯ diag(t)`` as operators."""
        w, s = unit_scale(self.weight)
        return conv_gram_bound(w, n_iter=self.n_iter, log_q=self.log_q) * s**2

    def output_weight(self) -> torch.Tensor:
        """``K ⊙ 2/t`` (inner_channels, channels, kh, kw), the kernel of the transposed conv, computed scale-free."""
        w, s = unit_scale(self.weight)
        return w * (2.0 / conv_gram_bound(w, n_iter=self.n_iter, log_q=self.log_q))[:, None, None, None] / s

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1, for every input size (Araujo et al. 2023, Thm 3)."""
        return 1.0

    def export(self) -> nn.Module:
        """Plain torch ``x + Conv2d(relu(Conv2d(x)))`` as a ``torch.fx.GraphModule`` (Note [export])."""
        b = None if self.bias is None else self.bias.detach()
        return residual_conv(self.weight.detach(), b, self.output_weight().detach(), self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.padding))  # (B, inner, H, W)
        return x - F.conv_transpose2d(z, self.output_weight(), padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, n_iter={self.n_iter}"
        )

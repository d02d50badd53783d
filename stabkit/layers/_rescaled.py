"""Rescaled layers: Spectral Rescaling (SR) and its first-order case AOL.

Both compute ``y = W diag(d) x + b`` with ``d = t^(-1/2)`` and ``WᵀW ⪯ diag(t)`` from Note [Gram bound] in
``_common.py``, so ``‖W diag(d)‖₂ ≤ 1``: the layer is 1-Lipschitz for any weights. The rescaling is computed
from the weight in every forward pass (once per step: a few small matrix products, nothing of batch size), so
there is no state and the layers work unchanged under ``torch.func`` transforms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_int

from ._common import conv_gram_bound, fan_in_bound, gram_bound, int_pair, normal_, pair_odd, uniform_, unit_scale
from ._export import plain_linear


class SRLinear(nn.Module):
    r"""Dense layer with Spectral Rescaling: ``y = W diag(t^{-1/2}) x + b``, 1-Lipschitz in ℓ2.

    ``t`` comes from the Gram power ``(WᵀW)^(2^(n_iter−1))`` (Note [Gram bound] in ``_common.py``);
    ``n_iter = 1`` is exactly AOL, larger ``n_iter`` brings ``‖W diag(d)‖₂`` up towards 1 (spectral
    normalisation) at the cost of ``n_iter − 1`` products of (in × in) matrices per step.

    We rescale the input side (columns of W), as AOL does, so that ``n_iter = 1`` equals :class:`AOLLinear`
    exactly; the thesis (arXiv:2510.25282, ch. 4) writes the same construction on the output side
    (``diag(1/t) W`` from ``WWᵀ``), which is this layer applied to ``Wᵀ``. Both satisfy the same guarantee.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to learn an additive bias.
        n_iter: number of Gram-power steps T ≥ 1 (1 = AOL).
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (*, in_features) → (*, out_features).

    Example:
        >>> layer = SRLinear(8, 4, n_iter=3)
        >>> layer(torch.zeros(2, 8)).shape
        torch.Size([2, 4])

    References:
        Delattre, Barthélemy, Allauzen, *Spectral norm of convolutional layers with circular and zero
        paddings*, arXiv 2402.00240 (thesis ch. 3b); Prach & Lampert, *Almost-Orthogonal Layers for Efficient
        General-Purpose Lipschitz Networks*, ECCV 2022.
    """

    lipschitz = 1.0  # guaranteed ℓ2 Lipschitz constant

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        n_iter: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.n_iter = check_positive_int("n_iter", n_iter)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Normal weights (the scale is irrelevant: the rescaling removes it), torch's uniform bias."""
        normal_(self.weight, 1.0 / math.sqrt(self.in_features), generator)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(self.in_features), generator)

    def rescaling(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Column scales ``d`` (in_features,) with ``‖W diag(d)‖₂ ≤ 1``."""
        w, s = unit_scale(self.weight if weight is None else weight)
        return gram_bound(w.T @ w, n_iter=self.n_iter).rsqrt() / s

    def effective_weight(self) -> torch.Tensor:
        """The matrix ``W diag(d)`` actually applied, (out_features, in_features); spectral norm ≤ 1."""
        w, _ = unit_scale(self.weight)  # scale-free: computed from the unit-scale weight (no overflow)
        return w * gram_bound(w.T @ w, n_iter=self.n_iter).rsqrt()[None, :]

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1 (``‖W diag(d)‖₂ ≤ 1`` for any weight)."""
        return 1.0

    def export(self) -> nn.Linear:
        """Plain ``nn.Linear`` with the effective weight (Note [export] in ``_export.py``)."""
        return plain_linear(self.effective_weight().detach(), None if self.bias is None else self.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, n_iter={self.n_iter}"


class AOLLinear(SRLinear):
    r"""Almost-orthogonal dense layer: ``y = W D x + b``, ``D_ii = (Σ_j |WᵀW|_ij)^{-1/2}``; 1-Lipschitz.

    The same layer as :class:`SRLinear` with ``n_iter = 1``.

    Args:
        in_features, out_features, bias, generator: as for :class:`SRLinear`.

    Shape:
        (*, in_features) → (*, out_features).

    References:
        Prach & Lampert, ECCV 2022, arXiv 2208.03160 (thesis ch. 4).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, n_iter=1, device=device, dtype=dtype, generator=generator)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class SRConv2d(nn.Module):
    r"""2-D convolution with Spectral Rescaling of its input channels; 1-Lipschitz in ℓ2 for any input size.

    ``y = conv2d(x, K ⊙ d) + b`` where ``d = t^{-1/2}`` (one scale per input channel) and ``t`` bounds the
    Gram operator ``KᵀK`` through its Gram kernel (Note [Gram bound] in ``_common.py``). The bound holds on
    the infinite grid, hence for every input size, zero padding and any stride (a strided conv is a row
    selection of the stride-1 one). ``n_iter = 1`` is exactly :class:`AOLConv2d`; each further step
    self-convolves a (c_in, c_in, s, s) kernel whose support doubles (3×3: s = 5, 9, 17, ...), at a cost of about
    c_in³·s_out²·s² multiply-adds: ``n_iter = 2`` adds ~20 % to a training step at 64 channels, batch 32, 32×32
    (CPU), ``n_iter = 3`` is about 5× dearer again. Keep ``n_iter = 2`` for 3×3 kernels unless channels are few.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: odd int or pair of odd ints.
        stride: convolution stride.
        padding: zero padding; ``None`` keeps the size (``k // 2`` per side).
        bias: whether to learn an additive bias.
        n_iter: number of Gram-power steps T ≥ 1 (1 = AOL).
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (B, in_channels, H, W) → (B, out_channels, H', W') as for ``nn.Conv2d``.

    Raises:
        ValueError: even or non-integer kernel size, non-positive sizes, negative padding.

    References:
        Delattre et al., arXiv 2402.00240 (thesis ch. 3b); Prach & Lampert, ECCV 2022.
    """

    lipschitz = 1.0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        *,
        n_iter: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = pair_odd("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        self.padding = (
            (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
            if padding is None
            else int_pair("padding", padding, minimum=0)
        )
        self.n_iter = check_positive_int("n_iter", n_iter)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        normal_(self.weight, 1.0 / math.sqrt(fan_in), generator)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(fan_in), generator)

    def rescaling(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Input-channel scales ``d`` (in_channels,) with ``‖conv(K ⊙ d)‖₂ ≤ 1``."""
        w, s = unit_scale(self.weight if weight is None else weight)
        return conv_gram_bound(w.transpose(0, 1), n_iter=self.n_iter).rsqrt() / s  # KᵀK: Gram on the input side

    def effective_weight(self) -> torch.Tensor:
        """The kernel ``K ⊙ d`` actually applied, (out, in, kh, kw)."""
        w, _ = unit_scale(self.weight)  # scale-free: computed from the unit-scale kernel (no overflow)
        return w * conv_gram_bound(w.transpose(0, 1), n_iter=self.n_iter).rsqrt()[None, :, None, None]

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1, for every input size, zero padding and stride."""
        return 1.0

    def export(self) -> nn.Conv2d:
        """Plain ``nn.Conv2d`` with the effective kernel (Note [export] in ``_export.py``)."""
        w = self.effective_weight().detach()
        out = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(w)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, n_iter={self.n_iter}"
        )


class AOLConv2d(SRConv2d):
    r"""Almost-orthogonal 2-D convolution (AOL): input channels rescaled by the Gram-kernel row sums.

    The same layer as :class:`SRConv2d` with ``n_iter = 1``: one (c_in, c_in, 2k−1, 2k−1) Gram kernel per
    step, nothing of batch size, so a training step costs about as much as a plain convolution.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias, generator: as for :class:`SRConv2d`.

    Shape:
        (B, in_channels, H, W) → (B, out_channels, H', W').

    References:
        Prach & Lampert, ECCV 2022, arXiv 2208.03160 (thesis ch. 4).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            bias,
            n_iter=1,
            device=device,
            dtype=dtype,
            generator=generator,
        )

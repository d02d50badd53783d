"""Parameter-free 1-Lipschitz building blocks and the last-layer-normalised (LLN) classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_int

from ._common import fan_in_bound, normal_, uniform_
from ._export import _GroupSortPlain, _MaxMinPlain, _PadChannelsPlain, _ScaledAvgPlain, plain_linear, traced


class PaddingChannels(nn.Module):
    """Zero-pad the channel dimension (dim 1) up to ``out_channels``; an isometry, hence 1-Lipschitz.

    Args:
        out_channels: number of channels after padding (≥ the input's).

    Shape:
        (B, C, *) → (B, out_channels, *).

    Raises:
        ValueError: at call time, if the input has more channels than ``out_channels``.
    """

    lipschitz = 1.0

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = check_positive_int("out_channels", out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c > self.out_channels:
            raise ValueError(f"input has {c} channels, more than out_channels={self.out_channels}")
        pad = [0, 0] * (x.ndim - 2) + [0, self.out_channels - c]  # F.pad lists the last dim first
        return F.pad(x, pad)

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1 (an isometry)."""
        return 1.0

    def export(self) -> nn.Module:
        """Plain-torch ``torch.fx.GraphModule`` of the same map."""
        return traced(_PadChannelsPlain(self.out_channels), "PaddingChannels")

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}"


class ScaledAvgPool2d(nn.Module):
    """Non-overlapping average pooling times ``√(kh·kw)``: ℓ2 norm exactly 1 (1-Lipschitz, not contracting).

    Each output sums ``kh·kw`` disjoint inputs; the sum has norm ``√(kh·kw)``, the average ``1/√(kh·kw)``.
    For the thesis' 4×4 pooling this is ``sum / 4`` (the SLL code's ``AvgPool2d(4, divisor_override=4)``);
    the plain sum pool is 4-Lipschitz and the plain average shrinks margins by 4. Trailing rows/columns that
    do not fill a window are dropped, as in ``nn.AvgPool2d`` (a coordinate selection: still 1-Lipschitz).

    Args:
        kernel_size: window (= stride) size, int or pair.

    Shape:
        (B, C, H, W) → (B, C, H // kh, W // kw).
    """

    lipschitz = 1.0

    def __init__(self, kernel_size: int | tuple[int, int] = 4) -> None:
        super().__init__()
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.kernel_size = (
            check_positive_int("kernel_size", ks[0]),
            check_positive_int("kernel_size", ks[1]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        return F.avg_pool2d(x, self.kernel_size) * (kh * kw) ** 0.5

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1 (disjoint windows, each of norm 1)."""
        return 1.0

    def export(self) -> nn.Module:
        """Plain-torch ``torch.fx.GraphModule`` of the same map."""
        return traced(_ScaledAvgPlain(self.kernel_size), "ScaledAvgPool2d")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class GroupSort(nn.Module):
    """Sort the features of ``dim`` in groups of ``group_size`` (descending); 1-Lipschitz.

    ``group_size = 2`` is GroupSort-2 (max, min of consecutive pairs).

    Args:
        group_size: size of the groups; must divide the size of ``dim``.
        dim: the feature dimension (1 for (B, C, H, W) and (B, F)).

    Shape:
        Same as the input.

    References:
        Anil, Lucas, Grosse, *Sorting out Lipschitz function approximation*, ICML 2019.
    """

    lipschitz = 1.0

    def __init__(self, group_size: int = 2, *, dim: int = 1) -> None:
        super().__init__()
        self.group_size = check_positive_int("group_size", group_size)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[self.dim]
        if n % self.group_size:
            raise ValueError(f"size {n} of dim {self.dim} is not divisible by group_size={self.group_size}")
        d = self.dim % x.ndim
        shape = x.shape[:d] + (n // self.group_size, self.group_size) + x.shape[d + 1 :]
        return x.reshape(shape).sort(dim=d + 1, descending=True).values.reshape(x.shape)

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1 (a permutation of the inputs at every point)."""
        return 1.0

    def export(self) -> nn.Module:
        """Plain-torch ``torch.fx.GraphModule`` of the same map."""
        return traced(_GroupSortPlain(self.group_size, self.dim), "GroupSort")

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class MaxMin(nn.Module):
    """MaxMin activation: split ``dim`` in halves ``a, b`` and return ``cat(max(a,b), min(a,b))``.

    1-Lipschitz (a permutation of each pair). With an odd size the last feature passes unchanged.

    Args:
        dim: the feature dimension.

    Shape:
        Same as the input.

    References:
        Anil et al., ICML 2019; used by AOL (Prach & Lampert 2022).
    """

    lipschitz = 1.0

    def __init__(self, *, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[self.dim]
        a, b, rest = x.split([n // 2, n // 2, n % 2], dim=self.dim)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b), rest], dim=self.dim)

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant: 1 (a permutation of the inputs at every point)."""
        return 1.0

    def export(self) -> nn.Module:
        """Plain-torch ``torch.fx.GraphModule`` of the same map."""
        return traced(_MaxMinPlain(self.dim), "MaxMin")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LinearNormalized(nn.Module):
    r"""Last-layer-normalised (LLN) classifier: ``z = Ŵ h + b`` with unit-norm rows ``ŵ_j = w_j/‖w_j‖``.

    Its own ℓ2 Lipschitz constant is ``‖Ŵ‖₂`` (≤ √out_features), given by :meth:`lipschitz_constant`; the LLN
    certificate uses instead ``(z_y − z_j)/‖ŵ_y − ŵ_j‖ > L_body·ε`` with the rows of :meth:`normalized_weight`
    (thesis, arXiv:2510.25282, ch. 2).

    Args:
        in_features: size of the input features.
        out_features: number of classes.
        bias: whether to learn the bias.
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (*, in_features) → (*, out_features).

    References:
        Singla, Singla, Feizi, *Improved deterministic l2 robustness on CIFAR-10 and CIFAR-100*, ICLR 2022;
        used by SLL (Araujo et al. 2023).
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
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        normal_(self.weight, 1.0, generator)
        if self.bias is not None:
            uniform_(self.bias, fan_in_bound(self.in_features), generator)

    def normalized_weight(self) -> torch.Tensor:
        """Ŵ (out_features, in_features) with unit-norm rows."""
        return self.weight / torch.linalg.vector_norm(self.weight, dim=1, keepdim=True).clamp_min(1e-30)

    def lipschitz_constant(self) -> float:
        """‖Ŵ‖₂ (float64 SVD, × (1 + 1e−9) for rounding): the ℓ2 Lipschitz constant of this layer."""
        with torch.no_grad():
            w = self.normalized_weight().to(torch.float64)
            return float(torch.linalg.matrix_norm(w, ord=2)) * (1.0 + 1e-9)

    def lipschitz_bound(self) -> float:
        """Guaranteed ℓ2 Lipschitz constant, :meth:`lipschitz_constant`."""
        return self.lipschitz_constant()

    def export(self) -> nn.Linear:
        """Plain ``nn.Linear`` with the normalised rows."""
        return plain_linear(self.normalized_weight().detach(), None if self.bias is None else self.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

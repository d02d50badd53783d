"""The Lipschitz networks of the thesis (chapter 4): one architecture, any layer type, any input shape.

``LipschitzNet``: (input normalisation) → zero-pad channels to ``width`` → ``n_conv`` residual conv layers →
1-Lipschitz 4×4 pooling → flatten → ``n_dense`` residual dense layers (inner width ``inner_dense``) → LLN.
For a vector input (``input_shape = (d,)``) the conv part is skipped and the features are zero-padded to
``width``. Published sizes (n_conv, n_dense, width) from the SLL and CPL papers: S (20, 7, 45),
M (30, 10, 60), L (50, 10, 90), XL (70, 15, 120), inner dense width
2048; ``"xs"`` and ``"tiny"`` are CPU sizes of ours.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from stabkit._checks import check_positive_int, resolve_generator
from stabkit.layers import (
    AOLConv2d,
    AOLLinear,
    CPLConv2d,
    CPLLinear,
    LinearNormalized,
    MaxMin,
    PaddingChannels,
    ScaledAvgPool2d,
    SLLConv2d,
    SLLLinear,
    SRConv2d,
    SRLinear,
)


class NetSize(NamedTuple):
    """Size of a :class:`LipschitzNet`: numbers of conv and dense layers, conv width, inner dense width."""

    n_conv: int
    n_dense: int
    width: int
    inner_dense: int


SIZES: dict[str, NetSize] = {
    "tiny": NetSize(1, 1, 8, 32),
    "xs": NetSize(3, 2, 16, 128),
    "s": NetSize(20, 7, 45, 2048),
    "m": NetSize(30, 10, 60, 2048),
    "l": NetSize(50, 10, 90, 2048),
    "xl": NetSize(70, 15, 120, 2048),
}
"""Named sizes: S–XL are the published ones (Araujo et al. 2023, Meunier et al. 2022), tiny/xs for CPU."""

LAYER_TYPES = ("sll", "cpl", "aol", "sr", "plain")
"""Layer types of :class:`LipschitzNet`; ``"plain"`` is an unconstrained residual baseline."""


class _PlainResidualConv(nn.Module):
    def __init__(self, c: int, k: int, **kw) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, k, padding=k // 2, **kw)
        self.conv2 = nn.Conv2d(c, c, k, padding=k // 2, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class _PlainResidualLinear(nn.Module):
    def __init__(self, d: int, inner: int, **kw) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, inner, **kw)
        self.fc2 = nn.Linear(inner, d, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def _plain_init(module: nn.Module, generator: torch.Generator) -> None:
    # torch's default init draws from the global RNG: redo it from our generator (same distributions)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                w = torch.rand(m.weight.shape, generator=generator, device=m.weight.device, dtype=m.weight.dtype)
                m.weight.copy_((2 * w - 1) * bound)
                if m.bias is not None:
                    b = torch.rand(m.bias.shape, generator=generator, device=m.bias.device, dtype=m.bias.dtype)
                    m.bias.copy_((2 * b - 1) * bound)


class LipschitzNet(nn.Module):
    r"""Lipschitz network of the thesis: padding, residual convs, 1-Lipschitz pooling, residual dense, LLN.

    The body (everything before the last layer) is 1-Lipschitz by construction for every layer type but
    ``"plain"``, times ``1/min(std)`` when an input normalisation ``(x − mean)/std`` is given (SLL
    only subtracts the mean). :meth:`lipschitz_constant` returns that guarantee, with or without the LLN head.

    Layer types: ``"sll"`` (SLL; ``n_iter > 1`` = residual SR), ``"cpl"`` (CPL, certified in eval mode),
    ``"aol"`` and ``"sr"`` (rescaled conv/dense layers followed by MaxMin; the dense ones are square), and
    ``"plain"`` (ordinary residual blocks, no guarantee; for comparisons).

    Args:
        input_shape: shape of one input, ``(C, H, W)`` or ``(d,)``.
        n_classes: number of classes (outputs).
        layer: one of :data:`LAYER_TYPES`.
        size: a key of :data:`SIZES` (case-insensitive) or a :class:`NetSize`.
        kernel_size: odd kernel size of the conv layers.
        pool: pooling window (4 in the papers; 1 = no pooling).
        n_iter: Gram-power steps for ``"sr"`` (default 2: the conv cost grows fast with it, see
            :class:`~stabkit.layers.SRConv2d`) and ``"sll"`` (default 1).
        mean, std: optional per-channel (per-feature) input normalisation.
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (B, *input_shape) → (B, n_classes).

    Raises:
        ValueError: unknown layer type or size, bad shapes, non-positive std.

    Example:
        >>> net = LipschitzNet((1, 8, 8), 10, layer="sll", size="tiny")
        >>> net(torch.zeros(2, 1, 8, 8)).shape, net.lipschitz_constant(head=False)
        (torch.Size([2, 10]), 1.0)

    References:
        Araujo et al., ICLR 2023 (arXiv 2303.03169); Meunier et al., ICML 2022 (arXiv 2110.12690);
        thesis ch. 4.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        *,
        layer: str = "sll",
        size: str | NetSize = "xs",
        kernel_size: int = 3,
        pool: int = 4,
        n_iter: int | None = None,
        mean: float | tuple[float, ...] | torch.Tensor | None = None,
        std: float | tuple[float, ...] | torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) not in (1, 3) or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) or (d,) with positive sizes, got {input_shape}")
        self.input_shape = input_shape
        self.n_classes = check_positive_int("n_classes", n_classes)
        if layer not in LAYER_TYPES:
            raise ValueError(f"layer must be one of {LAYER_TYPES}, got {layer!r}")
        self.layer = layer
        if isinstance(size, str):
            if size.lower() not in SIZES:
                raise ValueError(f"size must be one of {tuple(SIZES)} or a NetSize, got {size!r}")
            size = SIZES[size.lower()]
        self.size = NetSize(*size)
        n_conv, n_dense, width, inner = self.size
        check_positive_int("width", width)
        check_positive_int("inner_dense", inner)
        check_positive_int("pool", pool)
        kw = {"device": device, "dtype": dtype}
        g = resolve_generator(generator, torch.device("cpu") if device is None else device)
        lk = {**kw, "generator": g}

        # input normalisation (buffers, so that .to() moves them); Lipschitz factor 1/min(std)
        stat_shape = (input_shape[0], 1, 1) if len(input_shape) == 3 else (input_shape[0],)
        self.register_buffer("mean", self._stat("mean", mean, 0.0, stat_shape, kw))
        self.register_buffer("std", self._stat("std", std, 1.0, stat_shape, kw))
        if not bool((self.std > 0).all()):
            raise ValueError("std must be positive")

        blocks: list[nn.Module] = [PaddingChannels(width)]
        if len(input_shape) == 3:
            c, h, w = input_shape
            if c > width:
                raise ValueError(f"width={width} must be at least the number of input channels {c}")
            if h < pool or w < pool:
                raise ValueError(f"the input ({h}×{w}) is smaller than the pooling window {pool}")
            blocks += [self._conv_block(width, kernel_size, n_iter, lk) for _ in range(n_conv)]
            if pool > 1:
                blocks.append(ScaledAvgPool2d(pool))
            blocks.append(nn.Flatten())
            d = width * (h // pool) * (w // pool)
        else:
            if input_shape[0] > width:
                raise ValueError(f"width={width} must be at least the input dimension {input_shape[0]}")
            d = width
        blocks += [self._dense_block(d, inner, n_iter, lk) for _ in range(n_dense)]
        self.body = nn.Sequential(*blocks)
        self.head = LinearNormalized(d, n_classes, **lk)
        if layer == "plain":
            _plain_init(self.body, g)

    @staticmethod
    def _stat(name, value, default, shape, kw) -> torch.Tensor:
        t = torch.full(shape, default, **kw) if value is None else torch.as_tensor(value, **kw).clone()
        t = t.reshape(-1)
        if t.numel() == 1:
            t = t.expand(shape[0]).clone()
        if t.numel() != shape[0]:
            raise ValueError(f"{name} must have one value per input channel ({shape[0]}), got {t.numel()}")
        return t.reshape(shape)

    def _conv_block(self, c: int, k: int, n_iter: int | None, lk: dict) -> nn.Module:
        if self.layer == "sll":
            return SLLConv2d(c, c, k, n_iter=n_iter or 1, **lk)
        if self.layer == "cpl":
            return CPLConv2d(c, c, k, **lk)
        if self.layer == "aol":
            return nn.Sequential(AOLConv2d(c, c, k, **lk), MaxMin())
        if self.layer == "sr":
            return nn.Sequential(SRConv2d(c, c, k, n_iter=n_iter or 2, **lk), MaxMin())
        lk = {k_: v for k_, v in lk.items() if k_ != "generator"}
        return _PlainResidualConv(c, k, **lk)

    def _dense_block(self, d: int, inner: int, n_iter: int | None, lk: dict) -> nn.Module:
        if self.layer == "sll":
            return SLLLinear(d, inner, n_iter=n_iter or 1, **lk)
        if self.layer == "cpl":
            return CPLLinear(d, inner, **lk)
        if self.layer == "aol":
            return nn.Sequential(AOLLinear(d, d, **lk), MaxMin())
        if self.layer == "sr":
            return nn.Sequential(SRLinear(d, d, n_iter=n_iter or 2, **lk), MaxMin())
        lk = {k_: v for k_, v in lk.items() if k_ != "generator"}
        return _PlainResidualLinear(d, inner, **lk)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output (the input of the LLN head); ``lipschitz_constant(head=False)``-Lipschitz.

        Shape: (B, *input_shape) → (B, d).
        """
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def lipschitz_constant(self, *, head: bool = True) -> float:
        """Guaranteed ℓ2 Lipschitz constant from the layers' guarantees (upper bound; ``inf`` for "plain").

        Args:
            head: include the LLN last layer (its ``‖Ŵ‖₂`` ≤ √n_classes). Use ``head=False`` with the LLN
                certificate, which treats the last layer exactly.

        Returns:
            ``1/min(std)`` (body) times ``‖Ŵ‖₂`` if ``head``. CPL layers are certified in eval mode only.
        """
        if self.layer == "plain":
            return math.inf
        body = 1.0 / float(self.std.min())
        return body * self.head.lipschitz_constant() if head else body

"""The Lipschitz networks of the thesis (chapter 4): one architecture, any layer type, any input shape.

``LipschitzNet``: (input normalisation) → zero-pad channels to ``width`` → ``n_conv`` residual conv layers →
1-Lipschitz 4×4 pooling → flatten → ``n_dense`` residual dense layers (inner width ``inner_dense``) → LLN.
For a vector input (``input_shape = (d,)``) the conv part is skipped and the features are zero-padded to
``width``. Published sizes (n_conv, n_dense, width) from the SLL and CPL papers: S (20, 7, 45),
M (30, 10, 60), L (50, 10, 90), XL (70, 15, 120), inner dense width
2048; ``"xs"`` and ``"tiny"`` are CPU sizes of ours.

Unconstrained baselines shared by the notebooks (chapters 1, 5, 6): :func:`mlp`, :func:`small_cnn` and
:func:`small_resnet` (built from :class:`BasicBlock`). They are ``nn.Sequential`` models with named modules whose
last one is ``classifier`` (activation decay and the last-layer tools find it by that name). Unlike
:class:`LipschitzNet` they initialise exactly like torch's own layers, i.e. from torch's global RNG: build them
inside ``with ctx.seeded("<key>/init"):`` in a notebook (or after ``torch.manual_seed`` in a test).

Trained runs on disk (``python -m stabkit.train_net``) are read by :func:`stabkit.train_net.load_runs`.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
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
    export_plain,
)
from stabkit.layers._export import residual_graph


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


# The plain blocks are allocated with skip_init (no draw from torch's global RNG) and filled by _plain_init.
class _PlainResidualConv(nn.Module):
    def __init__(self, c: int, k: int, **kw) -> None:
        super().__init__()
        self.conv1 = nn.utils.skip_init(nn.Conv2d, c, c, k, padding=k // 2, **kw)
        self.conv2 = nn.utils.skip_init(nn.Conv2d, c, c, k, padding=k // 2, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))

    def lipschitz_bound(self) -> float:
        """``1 + ‖conv2‖·‖conv1‖`` with size-free kernel Gram bounds (zero padding: valid for every input size)."""
        from stabkit.norms import kernel_gram_iteration

        with torch.no_grad():
            norms = [float(kernel_gram_iteration(c.weight.double(), n_iter=6)) for c in (self.conv1, self.conv2)]
        return 1.0 + norms[0] * norms[1]

    def export(self) -> nn.Module:
        return residual_graph(nn.Sequential(copy.deepcopy(self.conv1), nn.ReLU(), copy.deepcopy(self.conv2)))


class _PlainResidualLinear(nn.Module):
    def __init__(self, d: int, inner: int, **kw) -> None:
        super().__init__()
        self.fc1 = nn.utils.skip_init(nn.Linear, d, inner, **kw)
        self.fc2 = nn.utils.skip_init(nn.Linear, inner, d, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))

    def lipschitz_bound(self) -> float:
        """``1 + ‖W2‖·‖W1‖`` (SVD with rounding slack)."""
        from stabkit.norms import spectral_norm_upper

        with torch.no_grad():
            norms = [float(spectral_norm_upper(f.weight.double())) for f in (self.fc1, self.fc2)]
        return 1.0 + norms[0] * norms[1]

    def export(self) -> nn.Module:
        return residual_graph(nn.Sequential(copy.deepcopy(self.fc1), nn.ReLU(), copy.deepcopy(self.fc2)))


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
        num_classes: number of classes (outputs), at least 2.
        layer: one of :data:`LAYER_TYPES`.
        size: a key of :data:`SIZES` (case-insensitive) or a :class:`NetSize`.
        kernel_size: odd kernel size of the conv layers.
        pool: pooling window (4 in the papers; 1 = no pooling).
        n_iter: Gram-power steps for ``"sr"`` (default 2: the conv cost grows fast with it, see
            :class:`~stabkit.layers.SRConv2d`) and ``"sll"`` (default 1).
        mean, std: optional per-channel (per-feature) input normalisation.
        generator: random generator for the initialisation (``None`` = seeded 0).

    Shape:
        (B, *input_shape) → (B, num_classes).

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
        num_classes: int,
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
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)  # a certificate needs 2
        if n_iter is not None:
            check_positive_int("n_iter", n_iter)
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
        for stat in ("mean", "std"):
            if not bool(torch.isfinite(getattr(self, stat)).all()):
                raise ValueError(f"{stat} must be finite, got {getattr(self, stat).flatten().tolist()}")
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
        self.head = LinearNormalized(d, num_classes, **lk)
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
            return SLLConv2d(c, c, k, n_iter=1 if n_iter is None else n_iter, **lk)
        if self.layer == "cpl":
            return CPLConv2d(c, c, k, **lk)
        if self.layer == "aol":
            return nn.Sequential(AOLConv2d(c, c, k, **lk), MaxMin())
        if self.layer == "sr":
            return nn.Sequential(SRConv2d(c, c, k, n_iter=2 if n_iter is None else n_iter, **lk), MaxMin())
        lk = {k_: v for k_, v in lk.items() if k_ != "generator" and v is not None}  # skip_init: no None device
        return _PlainResidualConv(c, k, **lk)

    def _dense_block(self, d: int, inner: int, n_iter: int | None, lk: dict) -> nn.Module:
        if self.layer == "sll":
            return SLLLinear(d, inner, n_iter=1 if n_iter is None else n_iter, **lk)
        if self.layer == "cpl":
            return CPLLinear(d, inner, **lk)
        if self.layer == "aol":
            return nn.Sequential(AOLLinear(d, d, **lk), MaxMin())
        if self.layer == "sr":
            return nn.Sequential(SRLinear(d, d, n_iter=2 if n_iter is None else n_iter, **lk), MaxMin())
        lk = {k_: v for k_, v in lk.items() if k_ != "generator" and v is not None}
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
            head: include the LLN last layer (its ``‖Ŵ‖₂`` ≤ √num_classes). Use ``head=False`` with the LLN
                certificate, which treats the last layer exactly.

        Returns:
            ``1/min(std)`` (body) times ``‖Ŵ‖₂`` if ``head``. CPL layers are certified in eval mode only.
        """
        if self.layer == "plain":
            return math.inf
        body = 1.0 / float(self.std.min())
        return body * self.head.lipschitz_constant() if head else body

    def export(self) -> nn.Sequential:
        """Plain torch form: ``Sequential(normalisation, *body, head)`` (Note [export] in ``stabkit.layers``).

        The input normalisation ``(x − mean)/std`` becomes a 1×1 ``nn.Conv2d`` (images) or an ``nn.Linear``
        (vectors) with weight ``diag(1/std)`` and bias ``−mean/std``.
        """
        c = self.input_shape[0]
        w = self.std.reshape(-1).reciprocal()
        b = -self.mean.reshape(-1) * w
        kw = {"device": w.device, "dtype": w.dtype}
        norm = nn.Conv2d(c, c, 1, **kw) if len(self.input_shape) == 3 else nn.Linear(c, c, **kw)
        with torch.no_grad():
            norm.weight.copy_(torch.diag(w).reshape(norm.weight.shape))
            norm.bias.copy_(b)
        return nn.Sequential(norm, *export_plain(self.body), export_plain(self.head))

    def lipschitz_bound(self, *, head: bool = True) -> float:
        """Certified ℓ2 Lipschitz constant of the (eval-mode) network, the protocol of :mod:`stabkit.lipschitz`.

        The construction's guarantee (:meth:`lipschitz_constant`) for the Lipschitz layer types; for ``"plain"``,
        a bound computed from the current weights (the product of the blocks' ``1 + ‖W2‖‖W1‖``), which holds for
        every input size.

        Args:
            head: include the LLN last layer.
        """
        if self.layer != "plain":
            return self.lipschitz_constant(head=head)
        from stabkit.lipschitz import layer_bounds

        body = float(layer_bounds(self.body).product.detach()) / float(self.std.min())
        return body * self.head.lipschitz_constant() if head else body


# ------------------------------------------------------------------------------------- unconstrained baselines
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
"""Hidden activations of :func:`mlp`."""


def _check_dropout(dropout: float) -> float:
    p = float(dropout)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must lie in [0, 1) (a drop probability; 0 = no Dropout module), got {dropout!r}")
    return p


def _head(modules: list, width: int, num_classes: int, dropout: float) -> nn.Sequential:
    # the classifier is always the last module, named "classifier": its input is the penultimate activation h
    if dropout > 0:
        modules.append(("dropout", nn.Dropout(dropout)))
    modules.append(("classifier", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(modules))


def mlp(
    in_shape: int | tuple[int, ...],
    num_classes: int,
    *,
    width: int,
    depth: int = 2,
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A plain multilayer perceptron: flatten → ``depth`` × (Linear → activation) → (Dropout) → classifier.

    Modules are named ``flatten``, ``fc1``, ``act1``, …, ``fc{depth}``, ``act{depth}``, ``dropout`` (only when
    ``dropout > 0``) and ``classifier``. Initialised like ``nn.Linear``, from torch's global RNG (see the module
    docstring).

    Args:
        in_shape: shape of one input (``(d,)``, ``(C, H, W)``, any), or its number of features.
        num_classes: number of outputs.
        width: width of every hidden layer.
        depth: number of hidden layers (0: a linear classifier on the flattened input).
        activation: ``"relu"`` or ``"tanh"`` (smooth: Jacobian and Hessian defined everywhere).
        dropout: drop probability before the classifier; 0 adds no Dropout module.

    Returns:
        An ``nn.Sequential`` on the CPU in float32 (move it with ``.to(device)``).

    Shape:
        (B, *in_shape) → (B, num_classes).

    Raises:
        ValueError: non-positive sizes, an unknown activation, or dropout outside [0, 1).

    Example:
        >>> net = mlp((1, 8, 8), 10, width=32, dropout=0.5)
        >>> net(torch.zeros(4, 1, 8, 8)).shape, list(net.named_children())[-1][0]
        (torch.Size([4, 10]), 'classifier')
    """
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"in_shape must be a positive int or a tuple of positive ints, got {in_shape!r}")
    check_positive_int("num_classes", num_classes)
    check_positive_int("width", width)
    check_positive_int("depth", depth, minimum=0)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    dropout = _check_dropout(dropout)
    d = math.prod(shape)
    modules: list = [("flatten", nn.Flatten())]
    for i in range(1, depth + 1):
        modules += [(f"fc{i}", nn.Linear(d, width)), (f"act{i}", ACTIVATIONS[activation]())]
        d = width
    return _head(modules, d, num_classes, dropout)


def small_cnn(in_channels: int, num_classes: int, *, width: int, dropout: float = 0.0) -> nn.Sequential:
    """A small ReLU CNN: three 3×3 convs (widths ``w, 2w, 2w``; the last two stride 2) → 2×2 average pool → classifier.

    The base classifier of the randomized-smoothing notebook (chapter 6). Modules: ``conv1``, ``act1``, …,
    ``conv3``, ``act3``, ``pool`` (adaptive, so any image size works), ``flatten``, ``dropout`` (only when
    ``dropout > 0``), ``classifier``. Initialised like torch's layers, from the global RNG.

    Args:
        in_channels: channels of the input images.
        num_classes: number of outputs.
        width: channels of the first conv ``w``.
        dropout: drop probability before the classifier; 0 adds no Dropout module.

    Shape:
        (B, in_channels, H, W) → (B, num_classes).

    Raises:
        ValueError: non-positive sizes or dropout outside [0, 1).
    """
    check_positive_int("in_channels", in_channels)
    check_positive_int("num_classes", num_classes)
    w = check_positive_int("width", width)
    dropout = _check_dropout(dropout)
    modules: list = [
        ("conv1", nn.Conv2d(in_channels, w, 3, padding=1)),
        ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1, stride=2)),
        ("act2", nn.ReLU()),
        ("conv3", nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2)),
        ("act3", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(2)),  # (B, 2w, 2, 2) whatever the image size
        ("flatten", nn.Flatten()),
    ]
    return _head(modules, 8 * w, num_classes, dropout)


class BasicBlock(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus a shortcut (a 1×1 conv-BN when the shape changes), ReLU.

    Args:
        in_channels, out_channels: channels in and out.
        stride: stride of the first conv and of the shortcut.

    Shape:
        (B, in_channels, H, W) → (B, out_channels, ⌈H/stride⌉, ⌈W/stride⌉).

    References:
        He et al., *Deep Residual Learning for Image Recognition*, CVPR 2016 (arXiv 1512.03385).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.short = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def small_resnet(in_channels: int, num_classes: int, *, width: int, dropout: float = 0.0) -> nn.Sequential:
    """A small ResNet: conv-BN-ReLU stem, 3 stages of 2 :class:`BasicBlock` (widths ``w, 2w, 4w``), pool, classifier.

    The CIFAR-10 model of the curvature notebook (chapter 5). Modules: ``stem``, ``bn``, ``relu``, ``stage0``,
    ``stage1``, ``stage2`` (stages 1 and 2 halve the resolution), ``pool`` (global average), ``flatten``,
    ``dropout`` (only when ``dropout > 0``), ``classifier`` (input width ``4w``). Initialised like torch's layers,
    from the global RNG.

    Args:
        in_channels: channels of the input images.
        num_classes: number of outputs.
        width: channels of the stem and of the first stage ``w``.
        dropout: drop probability before the classifier; 0 adds no Dropout module.

    Shape:
        (B, in_channels, H, W) → (B, num_classes).

    Raises:
        ValueError: non-positive sizes or dropout outside [0, 1).

    References:
        He et al., CVPR 2016 (arXiv 1512.03385); thesis ch. 5.
    """
    check_positive_int("in_channels", in_channels)
    check_positive_int("num_classes", num_classes)
    w = check_positive_int("width", width)
    dropout = _check_dropout(dropout)
    modules: list = [("stem", nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)), ("bn", nn.BatchNorm2d(w))]
    modules.append(("relu", nn.ReLU()))
    for i, (c_in, c_out, s) in enumerate([(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)]):
        modules.append((f"stage{i}", nn.Sequential(BasicBlock(c_in, c_out, s), BasicBlock(c_out, c_out, 1))))
    modules += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    return _head(modules, 4 * w, num_classes, dropout)

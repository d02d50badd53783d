"""Training losses for certified robustness: margin losses of Lipschitz networks and a Lipschitz penalty.

* :func:`multiclass_hinge` – the CPL loss (margin 0.7);
* :func:`offset_cross_entropy` – the SLL loss (offset √2·3/2, temperature 1/4);
* :func:`lipschitz_penalty` – ``Σ_layers relu(σ̂_layer − 1)`` with per-layer spectral-norm bounds (Gram iteration
  by default, or any of :data:`PENALTY_METHODS`), added to the cross-entropy of an ordinary network
  (Lipschitz-regularised training, thesis §3.3).

All take logits ``(B, K)`` and int64 labels ``(B,)`` and return the batch mean, like
``torch.nn.functional.cross_entropy``, so that ``stabkit.train.supervised(loss)`` adapts them to ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_float, check_positive_int, check_tensor, resolve_generator

__all__ = [
    "PENALTY_METHODS",
    "SLL_OFFSET",
    "multiclass_hinge",
    "offset_cross_entropy",
    "layer_spectral_bounds",
    "lipschitz_penalty",
]

#: SLL's default logit offset, √2·3/2: the margin it asks for is 3/2 of the ℓ2 radius unit √2 (Araujo et
# al.).
SLL_OFFSET = math.sqrt(2.0) * 1.5


def _check_classification(logits: torch.Tensor, labels: torch.Tensor) -> None:
    check_tensor("logits", logits, ndim=2)
    check_tensor("labels", labels, ndim=1)
    if labels.shape[0] != logits.shape[0] or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be int64 of shape ({logits.shape[0]},), got {labels.dtype} {tuple(labels.shape)}"
        )


def multiclass_hinge(logits: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.7) -> torch.Tensor:
    """Multi-class hinge loss ``mean_b Σ_{j≠y} relu(margin − z_y + z_j) / K`` (CPL's training loss).

    This is the Weston–Watkins hinge that ``torch.nn.MultiMarginLoss(margin=…)`` computes and the CPL code
    trains with; with a 1-Lipschitz network, a zero loss means every training point has margin ≥ ``margin``,
    i.e. certified radius ≥ ``margin / √2`` (≈ 0.495 for 0.7).

    Args:
        logits: ``(B, K)`` network outputs.
        labels: ``(B,)`` int64 classes.
        margin: the margin asked of every wrong class (> 0).

    Returns:
        Scalar tensor, the batch mean.

    Raises:
        ValueError: on non-finite logits, mismatched labels or a non-positive margin.

    References:
        Meunier, Delattre, Araujo, Allauzen, "A Dynamical System Perspective for Lipschitz Neural Networks",
        ICML 2022 (CPL). Thesis ch. 4.
    """
    _check_classification(logits, labels)
    margin = check_positive_float("margin", margin)
    true = logits.gather(1, labels[:, None])  # (B, 1)
    hinge = F.relu(margin - true + logits)  # (B, K); the true class contributes exactly `margin`
    hinge = hinge.scatter(1, labels[:, None], 0.0)  # so drop it
    return hinge.sum(dim=1).mean() / logits.shape[1]


def offset_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    offset: float = SLL_OFFSET,
    temperature: float = 0.25,
) -> torch.Tensor:
    """Cross-entropy with the true logit lowered by ``offset`` and a temperature (SLL's training loss).

    ``τ · CE((z − offset·onehot(y)) / τ, y)``: the offset makes the loss keep pushing until the margin
    exceeds about ``offset``, and the small temperature τ makes it close to a hinge on the margin while
    keeping gradients on every class. Multiplying by τ keeps the gradient scale independent of τ.

    Args:
        logits: ``(B, K)`` network outputs.
        labels: ``(B,)`` int64 classes.
        offset: subtracted from the true logit (default √2·3/2 ≈ 2.1213).
        temperature: τ > 0 (default 0.25).

    Returns:
        Scalar tensor, the batch mean.

    Raises:
        ValueError: on non-finite logits, mismatched labels, negative offset or non-positive temperature.

    References:
        Araujo, Havens, Delattre, Allauzen, Hu, "A Unified Algebraic Perspective on Lipschitz Neural
        Networks", ICLR 2023 (SLL); the loss follows Prach & Lampert, ECCV 2022. Thesis ch. 4.
    """
    _check_classification(logits, labels)
    offset = check_positive_float("offset", offset, allow_zero=True)
    temperature = check_positive_float("temperature", temperature)
    shifted = logits - offset * F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # (B, K)
    return temperature * F.cross_entropy(shifted / temperature, labels)


# Note [conv bounds]
#     Every per-layer bound here is :func:`stabkit.lipschitz.layer_bound` (Note [module bounds] in
#     ``stabkit/lipschitz.py``): with the input size known, a conv is bounded by Gram iteration on its DFT blocks at
#     its padded size (times the exact norm of the padding operator for reflect/replicate/circular modes), which is
#     the thesis's regularised training and cheap. Without the size, the kernel Gram iteration bounds a zero-padded
#     conv for every n, but its kernel support doubles at each iteration (cost ~ c³·2^(2T)·k²): fine for T ≤ 4, slow
#     at T = 6 for a training penalty. Other padding modes need the size.

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)

PenaltyMethod = Literal["gram", "exact", "lipgrid", "power", "fantastic_four"]
#: Per-layer spectral-norm methods of :func:`layer_spectral_bounds` and :func:`lipschitz_penalty` (Note [penalty
#: methods]).
PENALTY_METHODS: tuple[str, ...] = ("gram", "exact", "lipgrid", "power", "fantastic_four")

# Note [penalty methods]
#     The regularised training of arXiv 2305.16173 (§5, code ``lip4conv``, option ``--bound``) compares five
#     per-layer bounds used inside the same penalty; these are its five. Here:
#     * certified upper bounds, all from :func:`stabkit.lipschitz.layer_bound`: ``"gram"`` (Gram iteration on the
#       DFT blocks at the padded size; the paper's ``ours_backward``), ``"exact"`` (the exact circular norm at the
#       padded size, Sedghi et al. FFT + eigvalsh; ``sedghi2019``), ``"lipgrid"`` (Araujo et al. 2021;
#       ``araujo2021``). The size-free bounds of :func:`stabkit.lipschitz.layer_bounds` are left out: ``"grid"``
#       is not differentiable, and the kernel support of ``"kernel_gram"`` doubles at each iteration (too costly
#       for a training penalty at T = 6);
#     * estimates, **not** bounds: ``"power"`` (power iteration on the zero-padded, strided conv itself, Ryu et al.
#       2019; ``ryu2019``: a lower estimate of the layer's norm) and ``"fantastic_four"`` (Singla & Feizi 2021,
#       power iterations on four reshapes; ``singla2021``). Both start from a random vector drawn from
#       ``generator`` and run ``n_iter`` iterations (the paper's ``--bound_n_iter``, 6 for every method); the
#       gradient flows through the last product only, as in torch's ``spectral_norm``. Dense layers get
#       ``power_iteration`` for both.
#     ``n_iter`` is the number of Gram iterations for ``"gram"`` and for dense layers under ``"lipgrid"``;
#     ``"lipgrid"`` uses its own frequency grid (50 × 50 samples), ``"exact"`` no iterations.


def _estimate(
    module: nn.Module, shape: tuple[int, ...] | None, method: str, n_iter: int, g: torch.Generator | None, name: str
) -> torch.Tensor:
    """Power-iteration (``"power"``) or Fantastic-Four estimate of one layer (Note [penalty methods])."""
    from stabkit.norms import conv_fantastic_four, conv_power_iteration, power_iteration  # lazy, as above

    W = check_tensor(f"{name}.weight", module.weight)
    gen = resolve_generator(g, W.device)
    if isinstance(module, nn.Linear):
        return power_iteration(W, n_iter=n_iter, generator=gen)
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or tuple(module.dilation) != (1, 1):
        raise ValueError(
            f"{name}: method {method!r} supports Linear and plain Conv2d layers (groups 1, dilation 1), got "
            f"{type(module).__name__}; use a certified method"
        )
    if method == "fantastic_four":  # size-free; a strided conv is a subsampling of the stride-1 one
        return conv_fantastic_four(W, n_iter=n_iter, generator=gen)
    if shape is None:
        raise ValueError(f"{name}: method 'power' needs the input size: pass input_shape")
    if isinstance(module.padding, str) or module.padding_mode not in ("zeros", "circular"):
        raise ValueError(f"{name}: method 'power' needs numeric zero or circular padding")
    padding = "zero" if module.padding_mode == "zeros" else "circular"
    return conv_power_iteration(
        W, tuple(shape[-2:]), padding=padding, pad=tuple(module.padding), stride=tuple(module.stride),
        n_iter=n_iter, generator=gen,
    )  # fmt: skip


def layer_spectral_bounds(
    model: nn.Module,
    *,
    n_iter: int = 6,
    input_shape: tuple[int, ...] | None = None,
    bound: Callable[[nn.Module, int], torch.Tensor] | None = None,
    method: PenaltyMethod = "gram",
    layers: Literal["all", "conv"] = "all",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Upper bounds of the spectral norm of every linear layer (Linear, Conv1d/2d, ConvTranspose1d/2d) of a model.

    The bounds are those of the network-bound engine, :func:`stabkit.lipschitz.layer_bound` (one padding
    convention, every padding mode, stride, dilation and groups; Note [conv bounds]). A module called at several
    input sizes gets the largest of its bounds.

    Args:
        model: any network; only its linear layers are bounded (other modules are left to the caller).
        n_iter: Gram iterations (T in the thesis; 6 for the §3.3 training).
        input_shape: shape of one input, e.g. ``(1, 8, 8)``. With it, each conv is bounded by Gram iteration
            on its DFT blocks at its own padded input size (cheap and tight); without it, zero-padded convs by the
            kernel Gram iteration, valid for every input size but slow for ``n_iter > 4``.
        bound: ``bound(module, n_iter) -> scalar tensor`` to use instead (e.g. an exact SVD in tests).
        method: the per-layer method, one of :data:`PENALTY_METHODS` (Note [penalty methods]); ``"power"`` and
            ``"fantastic_four"`` are estimates, not bounds.
        layers: ``"all"`` linear layers, or only the convolutions (``"conv"``, as the official training code).
        generator: random starts of ``"power"`` / ``"fantastic_four"``; ``None`` = a fresh generator seeded 0.

    Returns:
        ``{module name: bound}``, differentiable with respect to the weights, in module order. Each value is
        an **upper** bound of the layer's ℓ2 operator norm, except under ``"power"`` and ``"fantastic_four"``.

    Raises:
        ValueError: a conv whose padding mode needs the input size without ``input_shape``; NaN/inf weights; an
            unknown ``method`` or ``layers``, or a layer that ``"power"`` / ``"fantastic_four"`` do not support.

    References:
        Delattre, Barthélemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional
        Layers by Gram Iteration", ICML 2023 (arXiv 2305.16173); Delattre, Barthélemy, Allauzen, arXiv 2402.00240
        (kernel bound, zero padding). Thesis (arXiv:2510.25282) ch. 3.
    """
    from stabkit.lipschitz import _Probe, layer_bound  # lazy: keeps `import stabkit.losses` light

    n_iter = check_positive_int("n_iter", n_iter)
    if method not in PENALTY_METHODS:
        raise ValueError(f"method must be one of {PENALTY_METHODS}, got {method!r}")
    if layers not in ("all", "conv"):
        raise ValueError(f"layers must be 'all' or 'conv', got {layers!r}")
    kinds = _CONV_TYPES if layers == "conv" else _WEIGHTED
    example = None
    if input_shape is not None and bound is None:
        param = next(model.parameters(), None)
        kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
        example = torch.zeros(1, *tuple(input_shape), **kw)
    probe = _Probe(model, example)
    bounds: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        if bound is not None:
            bounds[name] = bound(module, n_iter)
            continue
        shapes = probe.shapes.get(id(module)) or [None]
        if method in ("power", "fantastic_four"):
            values = [_estimate(module, shape, method, n_iter, generator, name) for shape in dict.fromkeys(shapes)]
        else:
            values = [
                layer_bound(module, shape, method=method, n_iter=n_iter, name=name).bound
                for shape in dict.fromkeys(shapes)
            ]
        bounds[name] = values[0] if len(values) == 1 else torch.stack(values).amax()
    return bounds


def lipschitz_penalty(
    model: nn.Module,
    *,
    n_iter: int = 6,
    threshold: float = 1.0,
    input_shape: tuple[int, ...] | None = None,
    bound: Callable[[nn.Module, int], torch.Tensor] | None = None,
    method: PenaltyMethod = "gram",
    layers: Literal["all", "conv"] = "all",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Penalty ``Σ_layers relu(σ̂_layer − threshold)`` on the spectral-norm bounds of a network's layers.

    Only layers whose bound exceeds ``threshold`` are penalised, so the penalty pulls every layer towards
    1-Lipschitz without shrinking those already below. Train with ``CE + r · lipschitz_penalty(model)``
    (thesis §3.3: r = 0.1, T = 6). The product of the bounds is then an upper bound of the network's
    Lipschitz constant (for ReLU networks without residual connections).

    Args:
        model: the network.
        n_iter: Gram iterations per layer.
        threshold: the norm above which a layer is penalised (> 0).
        input_shape: shape of one input; gives the cheap circular bound of each conv (see
            :func:`layer_spectral_bounds`). Recommended for training.
        bound: optional replacement for the Gram-iteration bound, see :func:`layer_spectral_bounds`.
        method: the per-layer method (:data:`PENALTY_METHODS`, Note [penalty methods]); the paper compares
            ``"gram"``, ``"exact"``, ``"lipgrid"``, ``"power"`` and ``"fantastic_four"`` as regularisers.
        layers: penalise ``"all"`` linear layers or only the convolutions (``"conv"``, as the official code).
        generator: random starts of the estimates ``"power"`` / ``"fantastic_four"``.

    Returns:
        Scalar tensor, differentiable with respect to the weights (0 if the model has no Linear/Conv2d).

    Raises:
        ValueError: as :func:`layer_spectral_bounds`, or a non-positive threshold.

    References:
        Delattre et al., ICML 2023, Section 5 (Lipschitz-regularised training). Thesis ch. 3.
    """
    threshold = check_positive_float("threshold", threshold)
    bounds = layer_spectral_bounds(
        model, n_iter=n_iter, input_shape=input_shape, bound=bound, method=method, layers=layers, generator=generator
    )
    if not bounds:
        param = next(model.parameters(), None)
        return torch.zeros((), device=None if param is None else param.device)
    return torch.stack([F.relu(b - threshold) for b in bounds.values()]).sum()

"""Training losses for certified robustness: margin losses of Lipschitz networks and a Lipschitz penalty.

* :func:`multiclass_hinge` – the CPL loss (margin 0.7);
* :func:`offset_cross_entropy` – the SLL loss (offset √2·3/2, temperature 1/4);
* :func:`lipschitz_penalty` – ``Σ_layers relu(σ̂_layer − 1)`` with Gram-iteration spectral-norm bounds,
  added to the cross-entropy of an ordinary network (Lipschitz-regularised training, thesis §3.3).

All take logits ``(B, K)`` and int64 labels ``(B,)`` and return the batch mean, like
``torch.nn.functional.cross_entropy``, so that ``stabkit.train.supervised(loss)`` adapts them to ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_float, check_positive_int, check_tensor

__all__ = [
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


def layer_spectral_bounds(
    model: nn.Module,
    *,
    n_iter: int = 6,
    input_shape: tuple[int, ...] | None = None,
    bound: Callable[[nn.Module, int], torch.Tensor] | None = None,
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

    Returns:
        ``{module name: bound}``, differentiable with respect to the weights, in module order. Each value is
        an **upper** bound of the layer's ℓ2 operator norm.

    Raises:
        ValueError: a conv whose padding mode needs the input size without ``input_shape``; NaN/inf weights.

    References:
        Delattre, Barthélemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional
        Layers by Gram Iteration", ICML 2023 (arXiv 2305.16173); Delattre, Barthélemy, Allauzen, arXiv 2402.00240
        (kernel bound, zero padding). Thesis (arXiv:2510.25282) ch. 3.
    """
    from stabkit.lipschitz import _Probe, layer_bound  # lazy: keeps `import stabkit.losses` light

    n_iter = check_positive_int("n_iter", n_iter)
    example = None
    if input_shape is not None and bound is None:
        param = next(model.parameters(), None)
        kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
        example = torch.zeros(1, *tuple(input_shape), **kw)
    probe = _Probe(model, example)
    bounds: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _WEIGHTED):
            continue
        if bound is not None:
            bounds[name] = bound(module, n_iter)
            continue
        shapes = probe.shapes.get(id(module)) or [None]
        values = [layer_bound(module, shape, n_iter=n_iter, name=name).bound for shape in dict.fromkeys(shapes)]
        bounds[name] = values[0] if len(values) == 1 else torch.stack(values).amax()
    return bounds


def lipschitz_penalty(
    model: nn.Module,
    *,
    n_iter: int = 6,
    threshold: float = 1.0,
    input_shape: tuple[int, ...] | None = None,
    bound: Callable[[nn.Module, int], torch.Tensor] | None = None,
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

    Returns:
        Scalar tensor, differentiable with respect to the weights (0 if the model has no Linear/Conv2d).

    Raises:
        ValueError: as :func:`layer_spectral_bounds`, or a non-positive threshold.

    References:
        Delattre et al., ICML 2023, Section 5 (Lipschitz-regularised training). Thesis ch. 3.
    """
    threshold = check_positive_float("threshold", threshold)
    bounds = layer_spectral_bounds(model, n_iter=n_iter, input_shape=input_shape, bound=bound)
    if not bounds:
        param = next(model.parameters(), None)
        return torch.zeros((), device=None if param is None else param.device)
    return torch.stack([F.relu(b - threshold) for b in bounds.values()]).sum()

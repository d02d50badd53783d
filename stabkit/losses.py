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


def _default_bound(module: nn.Module, n_iter: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Gram-iteration upper bound of the ℓ2 operator norm of a Linear or Conv2d layer (differentiable).

    See Note [conv bounds] for the choice between the circular (``size`` known) and the kernel bound.
    """
    from stabkit import norms  # lazy: keeps `import stabkit.losses` light

    if isinstance(module, nn.Linear):
        return norms.gram_iteration(module.weight, n_iter=n_iter)
    if size is not None:
        return norms.conv_gram_iteration(module.weight, size, n_iter=n_iter)
    return norms.kernel_gram_iteration(module.weight, n_iter=n_iter)


# Note [conv bounds]
#     With the input size known, a conv is bounded by Gram iteration on its DFT blocks at the circular size
#     m = n + k − 1 (zero padding): the zero-padded conv (any padding ≤ k − 1) is a sub-block of the full
#     linear convolution, itself a sub-block of the circular one on m ≥ n + k − 1 points, so the bound holds;
#     for circular padding the size is n itself. Stride s > 1 subsamples the stride-1 output (1-Lipschitz), so
#     the stride-1 bound holds too. This is the bound of the thesis's regularised training and it is cheap.
#     Without the size, the kernel Gram iteration bounds the conv for every n, but its kernel support doubles
#     at each iteration (cost ~ c³·2^(2T)·k²): fine for T ≤ 4, slow at T = 6 for a training penalty.


def _conv_input_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple[int, int]]:
    """Spatial input size of every Conv2d of ``model`` on one input of shape ``input_shape`` (a forward pass)."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(mod: nn.Module, args: tuple) -> None:  # returns None: the input is left unchanged
        sizes.setdefault(mod, tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    param = next(model.parameters(), None)
    kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, **kw))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def layer_spectral_bounds(
    model: nn.Module,
    *,
    n_iter: int = 6,
    input_shape: tuple[int, ...] | None = None,
    bound: Callable[[nn.Module, int], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Upper bounds of the spectral norm of every ``nn.Linear`` and ``nn.Conv2d`` of a model.

    Args:
        model: any network; only its Linear and Conv2d modules are bounded (grouped or dilated convs are
            refused, since the bounds below assume a plain convolution).
        n_iter: Gram iterations (T in the thesis; 6 for the §3.3 training).
        input_shape: shape of one input, e.g. ``(1, 8, 8)``. With it, each conv is bounded by Gram iteration
            on its DFT blocks at its own input size (cheap and tight); without it, by the kernel Gram
            iteration, valid for every input size but slow for ``n_iter > 4`` (Note [conv bounds]).
        bound: ``bound(module, n_iter) -> scalar tensor`` to use instead of Gram iteration (e.g. an exact SVD
            in tests).

    Returns:
        ``{module name: bound}``, differentiable with respect to the weights, in module order. Each value is
        an **upper** bound of the layer's ℓ2 operator norm (Gram iteration never underestimates).

    Raises:
        ValueError: if a Conv2d has groups or dilation other than 1.

    References:
        Delattre, Barthélemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional
        Layers by Gram Iteration", ICML 2023; Delattre, Barthélemy, Allauzen, arXiv 2402.00240 (kernel bound,
        zero padding). Thesis ch. 3.
    """
    n_iter = check_positive_int("n_iter", n_iter)
    sizes = _conv_input_sizes(model, tuple(input_shape)) if input_shape is not None and bound is None else {}
    bounds: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1):
                raise ValueError(
                    f"layer {name!r}: groups={module.groups}, dilation={module.dilation} is not supported; "
                    "the Gram-iteration bounds assume a plain convolution (groups=1, dilation=1)"
                )
        elif not isinstance(module, nn.Linear):
            continue
        if bound is not None:
            bounds[name] = bound(module, n_iter)
            continue
        size = sizes.get(module)
        if size is not None and module.padding_mode == "zeros":
            kh, kw = module.kernel_size
            size = (size[0] + kh - 1, size[1] + kw - 1)  # circular size that contains the zero-padded conv
        bounds[name] = _default_bound(module, n_iter, size)
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

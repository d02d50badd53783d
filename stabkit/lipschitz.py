"""Network-level Lipschitz bounds: per-layer certified bounds, their product (PUB), and a local lower bound.

For a feed-forward network ``f = L_k ∘ σ ∘ … ∘ σ ∘ L_1`` with 1-Lipschitz activations, ``Lip(f) ≤ Π_i Lip(L_i)``
(the product upper bound, PUB); the local lower bound ``‖J_f(x)‖₂`` at data points is ≤ Lip(f). The truth lies
between the two. Residual blocks ``x + g(x)`` need ``1 + Lip(g)`` instead of the plain product: this module reports
per-layer bounds of every layer, and the product of all of them only makes sense for a sequential model.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn

from stabkit._checks import check_positive_int, check_tensor, resolve_generator
from stabkit.norms import (
    conv_fantastic_four,
    conv_gram_iteration,
    conv_lipgrid,
    conv_spectral_norm_exact,
    gram_iteration,
    kernel_gram_iteration,
    spectral_norm_exact,
)

__all__ = ["LayerBound", "NetworkBound", "layer_bounds", "local_lipschitz_lower"]

METHODS = ("gram", "exact", "kernel_gram", "fantastic_four", "lipgrid")


class LayerBound(NamedTuple):
    """Upper bound on the ℓ2 Lipschitz constant of one linear layer (bias ignored: it does not change it)."""

    name: str  # qualified module name in the model
    kind: str  # "linear", "conv2d" or "batchnorm2d"
    input_size: tuple[int, int] | None  # spatial size seen by a convolution in the forward pass
    bound: torch.Tensor  # 0-dim; differentiable w.r.t. the weights for "gram" and "kernel_gram"


class NetworkBound(NamedTuple):
    """Per-layer bounds and their product (the PUB of a sequential network with 1-Lipschitz activations)."""

    layers: list[LayerBound]
    product: torch.Tensor


def _conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    """Total padding (both sides) per axis of a Conv2d, for the sub-block argument."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return 0, 0
        return m.kernel_size[0] - 1, m.kernel_size[1] - 1  # "same" (stride 1)
    return 2 * m.padding[0], 2 * m.padding[1]


def _conv_bound(m: nn.Conv2d, size: tuple[int, int], method: str, n_iter: int) -> torch.Tensor:
    if m.groups != 1 or m.dilation != (1, 1):
        raise ValueError(
            f"{m}: grouped or dilated convolutions are not supported; bound them per group, or convert them to a "
            "dense kernel first"
        )
    W = m.weight
    if method == "kernel_gram":  # any padding, any input size, any stride (subsampling has norm ≤ 1)
        return kernel_gram_iteration(W, n_iter=n_iter)
    if method == "fantastic_four":
        return conv_fantastic_four(W, n_iter=max(n_iter, 50))
    if method == "lipgrid":
        return conv_lipgrid(W, n_samples=max(n_iter, 20))
    fn = conv_gram_iteration if method == "gram" else conv_spectral_norm_exact
    kwargs = {"n_iter": n_iter} if method == "gram" else {}
    if m.padding_mode == "circular":
        stride = m.stride if size[0] % m.stride[0] == 0 and size[1] % m.stride[1] == 0 else 1
        return fn(W, size, stride=stride, **kwargs)
    if m.padding_mode != "zeros":
        raise ValueError(f"{m}: padding_mode {m.padding_mode!r} is not supported (use 'zeros' or 'circular')")
    # A zero-padded convolution (any stride) is a sub-block of the stride-1 circular convolution on the padded
    # grid, so this is an upper bound (exact only without padding effects).
    ph, pw = _conv_padding(m)
    return fn(W, (size[0] + ph, size[1] + pw), **kwargs)


def layer_bounds(
    model: nn.Module, example_input: torch.Tensor, *, method: str = "gram", n_iter: int = 6
) -> NetworkBound:
    """Certified upper bounds on every Linear, Conv2d and (eval-mode) BatchNorm2d of a model, and their product.

    Each convolution's input size is found by one forward pass of ``example_input[:1]`` (no gradient). A
    zero-padded convolution with input n×n and total padding p is bounded through the circular convolution on
    (n + p)×(n + p), of which it is a sub-block (Delattre et al. 2024); a strided convolution through the
    stride-1 one (exactly, with the aliased blocks, when the padding is circular and the stride divides n).

    Args:
        model: the network. Activations are assumed 1-Lipschitz (ReLU, GroupSort, tanh, ...).
        example_input: a batch of inputs of the right shape (only the first is used).
        method: ``"gram"`` (Gram iteration on the DFT blocks; linear layers by Gram iteration), ``"exact"``
            (FFT + eigvalsh; exact SVD), ``"kernel_gram"`` (zero-padding bound independent of n),
            ``"fantastic_four"`` or ``"lipgrid"`` (baselines; linear layers use Gram iteration).
        n_iter: iterations of the chosen method (Gram iterations; power iterations or grid size for baselines).

    Returns:
        ``NetworkBound(layers, product)``: one :class:`LayerBound` per layer, in forward order.

    Raises:
        ValueError: unknown method, grouped/dilated convolutions, unsupported padding mode, NaN/inf weights.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10))
        >>> nb = layer_bounds(net, torch.zeros(1, 3, 4, 4))
        >>> [lb.kind for lb in nb.layers]
        ['conv2d', 'linear']

    References:
        Delattre et al., ICML 2023 (arXiv 2305.16173) and arXiv 2402.00240; thesis chapters 2–3.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_tensor("example_input", example_input, min_ndim=1)
    n_iter = check_positive_int("n_iter", n_iter)
    sizes: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.BatchNorm2d):

            def hook(mod, inputs, _out, name=name):
                if name not in sizes:
                    order.append(name)
                    sizes[name] = tuple(inputs[0].shape[-2:])

            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    layers = []
    for name in order:
        m = modules[name]
        if isinstance(m, nn.Linear):
            w = m.weight
            b = spectral_norm_exact(w) if method == "exact" else gram_iteration(w, n_iter=n_iter)
            layers.append(LayerBound(name, "linear", None, b))
        elif isinstance(m, nn.Conv2d):
            check_tensor(f"{name}.weight", m.weight)
            layers.append(LayerBound(name, "conv2d", sizes[name], _conv_bound(m, sizes[name], method, n_iter)))
        else:  # BatchNorm2d in eval mode: a per-channel affine map
            if m.running_var is None:
                raise ValueError(f"{name}: BatchNorm2d without running statistics has no fixed Lipschitz constant")
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight.abs()
            layers.append(LayerBound(name, "batchnorm2d", sizes[name], scale.amax()))
    if layers:
        product = torch.stack([lb.bound.to(torch.float64) for lb in layers]).prod()
    else:
        product = torch.ones((), dtype=torch.float64)
    return NetworkBound(layers, product)


def local_lipschitz_lower(
    model: nn.Module, x: torch.Tensor, *, n_iter: int = 20, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Local lower bound on the Lipschitz constant: ``‖J_f(x_b)‖₂`` per input, by power iteration on JᵀJ.

    Each step is one Jacobian–vector product (``torch.func.jvp``) and one vector–Jacobian product
    (``torch.func.vjp``), with a separate unit vector per input; the result ``‖J v‖`` for a unit v is never above
    ``‖J(x_b)‖₂ ≤ Lip(f)``, so ``result.max()`` is a lower bound on the Lipschitz constant. The model must treat the
    inputs of the batch independently (eval mode for BatchNorm).

    Args:
        model: the network (any callable ``(B, ...) → (B, ...)``).
        x: data points, shape (B, ...).
        n_iter: power iterations (≥ 1).
        generator: source of the random start; ``None`` = fresh generator seeded 0.

    Returns:
        Lower estimates of ``‖J_f(x_b)‖₂``, shape (B,).

    Raises:
        ValueError: NaN/inf in x, bad ``n_iter``.

    References:
        Thesis chapter 1 (input sensitivity); Fazlyab et al. 2019 use the same lower bound to compare with PUB.
    """
    x = check_tensor("x", x, min_ndim=1).detach()
    n_iter = check_positive_int("n_iter", n_iter)
    g = resolve_generator(generator, x.device)

    def per_sample_normalise(v):
        n = torch.linalg.vector_norm(v.flatten(1), dim=1).clamp_min(torch.finfo(v.dtype).tiny)
        return v / n.view(-1, *([1] * (v.ndim - 1)))

    def jvp(v):
        # torch's first forward-mode call loads jit-scripted decompositions and warns about torch.jit.script
        # (torch-internal, not ours; the suite turns warnings into errors)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            return torch.func.jvp(model, (x,), (v,))[1]  # (B, out)

    v = per_sample_normalise(torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))
    _, vjp_fn = torch.func.vjp(model, x)  # the Jacobian at x is fixed: one vjp closure for all steps
    for _ in range(n_iter):
        (v,) = vjp_fn(jvp(v))  # (B, ...) = Jᵀ J v, block-diagonal over the batch
        v = per_sample_normalise(v)
    return torch.linalg.vector_norm(jvp(v).flatten(1), dim=1).detach()

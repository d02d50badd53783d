"""Network-level Lipschitz bounds: one engine for certified per-layer bounds and their composition.

For a network built from known pieces, :func:`layer_bounds` returns a certified upper bound on its ℓ2 Lipschitz
constant: the product over ``nn.Sequential`` children, ``1 + L(body)`` for a residual block, each stabkit layer's own
guarantee (``lipschitz_bound()``), and for known torch modules a bound for their exact configuration (Note [module
bounds]). Anything else is refused with an error naming it, unless its constant is given in ``assume``. The local
lower bound ``‖J_f(x)‖₂`` at data points (:func:`local_lipschitz_lower`) is ≤ Lip(f); the truth lies between the two.

Note [module bounds]
--------------------
* ``Linear``: Gram iteration on W (any leading batch dimensions: a block-diagonal operator with the same norm).
* Convolutions (``Conv1d/2d``, ``ConvTranspose1d/2d``; a 1-D one is a 1×k 2-D one): dilation is folded into a
  zero-dilated kernel (the same operator); groups give a block-diagonal operator, bounded by the largest block. A
  padded convolution is ``valid-conv ∘ pad``. The valid convolution on an m×m grid is a row block of the circular
  convolution on m×m, so the circular bound at the padded size bounds it (Delattre et al. 2024, arXiv 2402.00240);
  a stride subsamples the output (norm ≤ 1). The padding operator is an isometric embedding for zero padding; for
  reflect, replicate and circular padding it copies pixels and its exact norm (the square root of the largest
  pixel multiplicity, a product over the two axes) multiplies the bound. Circular padding by exactly (k − 1)/2 on
  both sides is the circular convolution itself (bounded exactly, with its stride). A transposed convolution is the
  adjoint of the convolution with the same weight on its output grid (same norm). Size-free methods
  (``"kernel_gram"``, ``"grid"``, ``"lipgrid"``) bound the convolution on the infinite grid, hence the valid
  convolution at every size.
* ``BatchNorm1d/2d/3d`` with running statistics: ``max |γ|/√(var + eps)`` (the eval-mode affine map).
* Linear channel-wise maps without weights (average and adaptive average pooling, ``Upsample``, explicit padding
  modules): the exact norm of their matrix at the recorded input size, built by applying the module to the basis
  images (float64 SVD, rounded up).
* Max pooling: ``√(largest number of windows that contain one pixel)``; activations: their largest slope (ReLU 1,
  tanh 1, sigmoid 1/4, GELU 1.13, SiLU 1.1, ...); Flatten, Identity, Dropout (eval): 1.

Bounds are of the model as it computes in **eval mode** (BatchNorm with its running statistics, no dropout, CPL with
its certified step): a train-mode BatchNorm normalises by batch statistics and has no per-input Lipschitz constant.
Computing a bound never changes the model: the probing forward pass (for input sizes) runs in eval mode without
gradient, and every module's mode is restored afterwards.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_int, check_tensor, resolve_generator
from stabkit.norms import (
    conv_gram_iteration,
    conv_grid_bound,
    conv_lipgrid,
    conv_spectral_norm_exact,
    gram_iteration,
    kernel_gram_iteration,
    spectral_norm_upper,
)

__all__ = ["LayerBound", "NetworkBound", "layer_bound", "layer_bounds", "local_lipschitz_lower"]

Method = Literal["gram", "exact", "kernel_gram", "grid", "lipgrid"]
METHODS: tuple[str, ...] = ("gram", "exact", "kernel_gram", "grid", "lipgrid")
"""Per-layer bound methods: Gram iteration at the input size (``"gram"``), exact circular norm at the padded size /
SVD with slack (``"exact"``), and size-free convolution bounds (``"kernel_gram"``, ``"grid"``, ``"lipgrid"``)."""

_MATERIALIZE_LIMIT = 4096  # largest number of pixels for which a weight-free linear map is materialised

_ACTIVATIONS: dict[type, Callable[[nn.Module], float]] = {
    nn.ReLU: lambda m: 1.0,
    nn.ReLU6: lambda m: 1.0,
    nn.Tanh: lambda m: 1.0,
    nn.Hardtanh: lambda m: 1.0,
    nn.Softsign: lambda m: 1.0,
    nn.Softplus: lambda m: 1.0,
    nn.CELU: lambda m: 1.0,
    nn.Sigmoid: lambda m: 0.25,
    nn.Hardsigmoid: lambda m: 1.0 / 6.0,
    nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    nn.ELU: lambda m: max(1.0, abs(m.alpha)),
    nn.SELU: lambda m: 1.7581,  # scale · alpha = 1.0507 · 1.6733
    nn.GELU: lambda m: 1.13,  # max slope 1.1289 (erf) / 1.1290 (tanh approximation)
    nn.SiLU: lambda m: 1.1,  # max slope 1.0998
    nn.Mish: lambda m: 1.09,  # max slope 1.0885
    nn.Hardswish: lambda m: 1.5,
    nn.Identity: lambda m: 1.0,
    nn.Flatten: lambda m: 1.0,
    nn.Unflatten: lambda m: 1.0,
    nn.Dropout: lambda m: 1.0,  # eval mode: the identity
    nn.Dropout1d: lambda m: 1.0,
    nn.Dropout2d: lambda m: 1.0,
    nn.Dropout3d: lambda m: 1.0,
    nn.AlphaDropout: lambda m: 1.0,
}

_LINEAR_MAPS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Upsample,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.CircularPad1d,
    nn.CircularPad2d,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class LayerBound(NamedTuple):
    """Certified upper bound on the ℓ2 Lipschitz constant of one module call (bias ignored: it does not change it)."""

    name: str  # qualified module name in the model ("" for the model itself)
    kind: str  # "linear", "conv2d", "batchnorm", "activation", "stabkit", "assumed", ... (Note [module bounds])
    input_size: tuple[int, ...] | None  # spatial size seen by the call in the probing forward pass
    bound: torch.Tensor  # 0-dim; differentiable w.r.t. the weights for "gram" and "kernel_gram"


class NetworkBound(NamedTuple):
    """Bounds of every module call, and ``product``: the composed certified bound of the whole model.

    ``product`` is the product over sequential compositions, with ``1 + L`` for residual blocks (for a purely
    sequential model: the product upper bound, PUB).
    """

    layers: list[LayerBound]
    product: torch.Tensor


def _spatial(shape: tuple[int, ...] | None, n: int, m: nn.Module) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if len(shape) < n + 1:
        raise ValueError(f"{type(m).__name__} was called on an input of shape {shape}; expected ≥ {n + 1} dims")
    return tuple(int(v) for v in shape[-n:])


def _dilate(kernel: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    dh, dw = dilation
    if (dh, dw) == (1, 1):
        return kernel
    c_out, c_in, kh, kw = kernel.shape
    out = kernel.new_zeros(c_out, c_in, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[:, :, ::dh, ::dw] = kernel
    return out


def _pad_norm(n: int, before: int, after: int, mode: str) -> float:
    """Exact ℓ2 norm of 1-D padding of an n-vector (an isometry for zero padding)."""
    if mode == "zeros" or (before == 0 and after == 0):
        return 1.0
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]  # (n, 1, n): the basis vectors
    padded = F.pad(eye, (before, after), mode=mode)  # (n, 1, n + before + after)
    return float(torch.linalg.matrix_norm(padded[:, 0, :], ord=2)) * (1 + 1e-12)


def _conv_bound(
    m: nn.Module, shape: tuple[int, ...] | None, method: str, n_iter: int, name: str
) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """See Note [module bounds]. Returns the bound and the spatial size used."""
    one_d = isinstance(m, nn.Conv1d | nn.ConvTranspose1d)
    transposed = isinstance(m, nn.ConvTranspose1d | nn.ConvTranspose2d)
    W = m.weight
    check_tensor(f"{name}.weight", W)
    if one_d:
        W = W[:, :, None, :]
    as_pair = (lambda v: (1, v[0])) if one_d else (lambda v: tuple(v))  # strides and dilations: 1 on the dummy axis
    as_pad = (lambda v: (0, v[0])) if one_d else (lambda v: tuple(v))  # paddings: 0 on the dummy axis
    stride, dilation = as_pair(m.stride), as_pair(m.dilation)
    W = _dilate(W, dilation)
    kh, kw = W.shape[-2:]
    spatial = _spatial(shape, 1 if one_d else 2, m)
    size = None if spatial is None else ((1, spatial[0]) if one_d else spatial)
    if transposed:  # the adjoint of conv2d(·, W, stride, padding) on the output grid
        if size is not None:
            op = as_pad(m.output_padding)
            pads = as_pad(m.padding)
            size = tuple((size[i] - 1) * stride[i] - 2 * pads[i] + (W.shape[-2:][i] - 1) + op[i] + 1 for i in range(2))
        padding = [p for p in as_pad(m.padding) for _ in (0, 1)]  # (top, bottom, left, right)
        mode = "zeros"
    else:
        if isinstance(m.padding, str):
            if m.padding == "valid":
                padding = [0, 0, 0, 0]
            else:  # "same": torch pads d(k − 1) in total, the extra one after
                padding = []
                for k in (kh, kw):
                    padding += [(k - 1) // 2, (k - 1) - (k - 1) // 2]
        else:
            padding = [p for p in as_pad(m.padding) for _ in (0, 1)]
        mode = m.padding_mode
    # groups: the operator is block-diagonal (after permuting channels), bounded by its largest block
    g = m.groups
    kernels = list(W.chunk(g, dim=0)) if g > 1 else [W]  # (c_out/g, c_in/g, kh, kw) each

    exact_circular = (
        mode == "circular"
        and kh % 2 == 1
        and kw % 2 == 1
        and padding == [(kh - 1) // 2] * 2 + [(kw - 1) // 2] * 2
        and not transposed
    )
    if method in ("kernel_gram", "grid", "lipgrid") or size is None:
        if size is None and mode != "zeros":
            raise ValueError(
                f"{name} ({type(m).__name__}, padding_mode={mode!r}) needs its input size: pass an example input"
            )
        mult = 1.0
        if mode != "zeros":
            mult = _pad_norm(size[0], *padding[:2], mode) * _pad_norm(size[1], *padding[2:], mode)
        if method == "grid":
            one = [conv_grid_bound(K, n_samples=max(32, 4 * max(kh, kw))) for K in kernels]
        elif method == "lipgrid":
            one = [conv_lipgrid(K) for K in kernels]
        else:
            one = [kernel_gram_iteration(K, n_iter=n_iter) for K in kernels]
        return torch.stack(one).amax() * mult, size
    fn = conv_gram_iteration if method == "gram" else conv_spectral_norm_exact
    kwargs = {"n_iter": n_iter} if method == "gram" else {}
    if exact_circular:
        st = stride if size[0] % stride[0] == 0 and size[1] % stride[1] == 0 else (1, 1)
        one = [fn(K, size, stride=st, **kwargs) for K in kernels]
        return torch.stack(one).amax(), size
    mult = _pad_norm(size[0], *padding[:2], mode) * _pad_norm(size[1], *padding[2:], mode)
    padded = (size[0] + padding[0] + padding[1], size[1] + padding[2] + padding[3])
    one = [fn(K, padded, **kwargs) for K in kernels]
    return torch.stack(one).amax() * mult, size


def _materialized_norm(m: nn.Module, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Exact norm of a weight-free, channel-wise linear module at the input shape (B, C, *spatial)."""
    spatial = tuple(shape[2:])
    n = math.prod(spatial)
    if n > _MATERIALIZE_LIMIT:
        raise ValueError(
            f"{name} ({type(m).__name__}) sees {n} pixels, more than the {_MATERIALIZE_LIMIT} for which its matrix is "
            f"built; pass assume={{module: L}} with a bound you trust"
        )
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *spatial)
    with torch.no_grad():  # an affine map (constant padding): subtract its offset
        out = (m(basis) - m(torch.zeros_like(basis[:1]))).reshape(n, -1)
    return torch.linalg.matrix_norm(out, ord=2) * (1 + 1e-9)


def _window_multiplicity(k: int, s: int, d: int) -> int:
    """Largest number of pooling windows (size k, stride s, dilation d) that contain one position."""
    return min(k, math.ceil((d * (k - 1) + 1) / s)) if d > 1 else math.ceil(k / s)


def _maxpool_bound(m: nn.Module, shape: tuple[int, ...] | None, name: str) -> float:
    if isinstance(m, nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d):
        if shape is None:
            raise ValueError(f"{name} ({type(m).__name__}) needs its input size: pass an example input")
        nd = 1 if isinstance(m, nn.AdaptiveMaxPool1d) else 2
        spatial = shape[-nd:]
        outs = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * nd
        mult = 1
        for n, o in zip(spatial, outs, strict=True):
            o = n if o is None else o
            count = [0] * n
            for i in range(o):
                for j in range((i * n) // o, -((-(i + 1) * n) // o)):
                    count[j] += 1
            mult *= max(count)
        return math.sqrt(mult)
    nd = 1 if isinstance(m, nn.MaxPool1d) else 2

    def tup(v):
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    mult = 1
    for k, s, d in zip(tup(m.kernel_size), tup(m.stride), tup(m.dilation), strict=True):
        mult *= _window_multiplicity(k, s, d)
    return math.sqrt(mult)


def layer_bound(
    module: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    method: Method = "gram",
    n_iter: int = 6,
    name: str = "",
) -> LayerBound:
    """Certified bound of one module call (Note [module bounds]); the per-layer step of :func:`layer_bounds`.

    Args:
        module: a known torch module or a module with a ``lipschitz_bound()`` method.
        input_shape: the shape of the module's input in this call (batch included), or ``None`` where the bound
            does not depend on it (size-free methods, dense layers, activations).
        method: see :data:`METHODS`.
        n_iter: Gram iterations.
        name: the module's name, for messages.

    Returns:
        A :class:`LayerBound`.

    Raises:
        ValueError: a module without a known bound (named), a size-dependent module without ``input_shape``,
            a train-mode-only BatchNorm, NaN/inf weights.
    """
    label = name or type(module).__name__
    own = getattr(module, "lipschitz_bound", None)
    if callable(own):
        b = own()
        return LayerBound(
            name,
            "stabkit" if type(module).__module__.startswith("stabkit") else "declared",
            None,
            torch.as_tensor(b, dtype=torch.float64),
        )
    from stabkit.layers import is_rescaled  # lazy: layers import nothing from here

    if isinstance(module, (nn.Linear, *_CONVS)) and is_rescaled(module):  # a user's layer under spectral_rescale
        return LayerBound(name, "rescaled", None, torch.ones((), dtype=torch.float64))
    if isinstance(module, nn.Linear):
        W = check_tensor(f"{label}.weight", module.weight)
        b = spectral_norm_upper(W) if method == "exact" else gram_iteration(W, n_iter=n_iter)
        return LayerBound(name, "linear", None, b)
    if isinstance(module, _CONVS):
        b, size = _conv_bound(module, input_shape, method, n_iter, label)
        kind = type(module).__name__.lower()
        return LayerBound(name, kind, size, b)
    if isinstance(module, _BATCHNORMS):
        if module.running_var is None:
            raise ValueError(
                f"{label}: {type(module).__name__} without running statistics normalises by batch statistics and "
                "has no per-input Lipschitz constant"
            )
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.abs()
        return LayerBound(name, type(module).__name__.lower(), None, scale.amax())
    for cls, fn in _ACTIVATIONS.items():
        if type(module) is cls:
            return LayerBound(name, "activation", None, torch.tensor(fn(module), dtype=torch.float64))
    if isinstance(module, nn.PReLU):
        slope = float(module.weight.detach().abs().max())
        return LayerBound(name, "activation", None, torch.tensor(max(1.0, slope), dtype=torch.float64))
    if isinstance(module, nn.MaxPool1d | nn.MaxPool2d | nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d):
        b = _maxpool_bound(module, input_shape, label)
        return LayerBound(name, "maxpool", None, torch.tensor(b, dtype=torch.float64))
    if isinstance(module, _LINEAR_MAPS):
        if input_shape is None:
            raise ValueError(f"{label} ({type(module).__name__}) needs its input size: pass an example input")
        shape = tuple(input_shape)
        cls = type(module).__name__
        nd = 1 if cls.endswith("1d") else 2 if cls.endswith("2d") else len(shape) - 2
        if len(shape) < nd + 2:  # unbatched input: add the batch dimension
            shape = (1, *shape)
        b = _materialized_norm(module, shape, label)
        return LayerBound(name, "linear map", shape[2:], b)
    raise ValueError(
        f"no certified Lipschitz bound is known for module {label!r} ({type(module).__name__}); give it a "
        "lipschitz_bound() method, or pass assume={module: L} with an upper bound of its ℓ2 Lipschitz constant"
    )


class _Probe:
    """Input shapes of every module call, in call order, from one eval-mode, no-grad forward pass."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor | None) -> None:
        self.shapes: dict[int, list[tuple[int, ...]]] = {}
        self.used: dict[int, int] = {}
        if example_input is None:
            return
        modules = list(model.modules())
        modes = [m.training for m in modules]

        def record(mod: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                self.shapes.setdefault(id(mod), []).append(tuple(args[0].shape))

        hooks = [m.register_forward_pre_hook(record) for m in modules]
        try:
            model.eval()
            with torch.no_grad():
                model(example_input[:1])
        finally:
            for h in hooks:
                h.remove()
            for m, mode in zip(modules, modes, strict=True):
                m.training = mode

    def next(self, m: nn.Module) -> tuple[int, ...] | None:
        calls = self.shapes.get(id(m))
        if not calls:
            return None
        i = self.used.get(id(m), 0)
        self.used[id(m)] = i + 1
        return calls[min(i, len(calls) - 1)]


def _residual_types() -> tuple[type, ...]:
    from stabkit.layers import Residual  # lazy: layers import nothing from here

    return (Residual,)


def _compose(
    m: nn.Module,
    name: str,
    probe: _Probe,
    out: list[LayerBound],
    assume: Mapping[nn.Module, float],
    method: str,
    n_iter: int,
) -> torch.Tensor:
    if m in assume:
        b = torch.as_tensor(float(assume[m]), dtype=torch.float64)
        probe.next(m)
        out.append(LayerBound(name, "assumed", None, b))
        return b
    if isinstance(m, nn.Sequential):
        probe.next(m)
        b = torch.ones((), dtype=torch.float64)
        for key, child in m._modules.items():
            if child is not None:
                b = b * _compose(child, f"{name}.{key}" if name else key, probe, out, assume, method, n_iter)
        return b
    if isinstance(m, _residual_types()) and not callable(getattr(m, "lipschitz_bound", None)):
        probe.next(m)
        body = _compose(m.body, f"{name}.body" if name else "body", probe, out, assume, method, n_iter)
        return 1.0 + body
    lb = layer_bound(m, probe.next(m), method=method, n_iter=n_iter, name=name)
    if not (lb.kind == "activation" and float(lb.bound) == 1.0):  # list what the bound is made of
        out.append(lb)
    return lb.bound.to(torch.float64)


def layer_bounds(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    method: Method = "gram",
    n_iter: int = 6,
    assume: Mapping[nn.Module, float] | None = None,
) -> NetworkBound:
    """Certified upper bound on the ℓ2 Lipschitz constant of a network, and the bound of every module call.

    The model is composed from ``nn.Sequential`` (product of the children, a module used twice counted twice),
    residual blocks (:class:`stabkit.layers.Residual`: ``1 + L(body)``), modules that state their own guarantee
    through a ``lipschitz_bound()`` method (every stabkit layer and :class:`stabkit.models.LipschitzNet`), and
    known torch modules (Note [module bounds] in this module). Input sizes come from one forward pass of
    ``example_input[:1]`` in eval mode without gradient; the model's modes and state are left unchanged. The bound
    is that of the eval-mode function.

    Args:
        model: the network.
        example_input: a batch of inputs of the right shape (only the first is used); ``None`` if no module needs
            its input size (dense networks, or convolutions with a size-free ``method``).
        method: ``"gram"`` (Gram iteration on the DFT blocks at the padded size; dense layers by Gram iteration),
            ``"exact"`` (exact circular norm at the padded size; dense layers by SVD with rounding slack), or the
            size-free convolution bounds ``"kernel_gram"``, ``"grid"`` (:func:`stabkit.norms.conv_grid_bound`),
            ``"lipgrid"``.
        n_iter: Gram iterations.
        assume: ``{module: L}``: take ``L`` as the certified constant of these modules (an escape hatch for
            modules this engine does not know; the certificate is then only as good as ``L``).

    Returns:
        ``NetworkBound(layers, product)``: one :class:`LayerBound` per module call in forward order, and the
        composed bound of the whole model.

    Raises:
        ValueError: unknown method; a module without a known bound (its name is in the message) and not in
            ``assume``; an unsupported configuration; NaN/inf weights.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10))
        >>> nb = layer_bounds(net, torch.zeros(1, 3, 4, 4))
        >>> [lb.kind for lb in nb.layers]
        ['conv2d', 'linear']

    References:
        Delattre et al., ICML 2023 (arXiv 2305.16173) and arXiv 2402.00240; thesis (arXiv:2510.25282) ch. 2–3.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if example_input is not None:
        check_tensor("example_input", example_input, min_ndim=1)
    n_iter = check_positive_int("n_iter", n_iter)
    assume = {} if assume is None else dict(assume)
    for mod, value in assume.items():
        if not isinstance(mod, nn.Module) or not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"assume must map modules to finite non-negative constants, got {mod!r}: {value!r}")
    for name, m in model.named_modules():
        if isinstance(m, _BATCHNORMS) and m.running_var is None and m not in assume:
            raise ValueError(
                f"{name or 'model'}: {type(m).__name__} without running statistics normalises by batch statistics "
                "and has no per-input Lipschitz constant"
            )
    probe = _Probe(model, example_input)
    layers: list[LayerBound] = []
    product = _compose(model, "", probe, layers, assume, method, n_iter)
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

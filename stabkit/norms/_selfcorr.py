"""The self-correlation of a kernel, ``G[i, j, τ] = Σ_(l, x) M[i, l, x + τ] M[j, l, x]``, by the cheaper of the
spatial and the frequency-domain formulations: the squaring step of :func:`stabkit.norms.kernel_gram_iteration`
and the lag sums behind the Gram matrices of :func:`stabkit.norms.conv_grid_bound` (both import it from here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _next_fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c ≥ n (FFT-friendly grid size)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _grid_sizes(h: int, w: int) -> tuple[int, int, int, int]:
    """Lag extent (2h − 1, 2w − 1) of a self-correlation and the smallest FFT-friendly grid holding it."""
    H, W = 2 * h - 1, 2 * w - 1
    return H, W, _next_fast_len(H), _next_fast_len(W)


def _use_spatial(M: torch.Tensor) -> bool:
    """Whether the spatial self-convolution costs fewer flops than the frequency form (see below)."""
    c, cp, h, w = M.shape
    H, W, nh, nw = _grid_sizes(h, w)
    spatial = 2.0 * c * c * cp * h * w * H * W
    logn = math.log2(nh * nw)
    freq = 8.0 * c * c * cp * nh * (nw // 2 + 1) + 5.0 * (c * cp + c * c) * nh * nw * logn
    return spatial <= freq


def _row_block(c: int, n_f: int, row_sums: bool) -> int:
    """Rows of G per product in the frequency form: all of them, or, when only row sums are wanted, blocks that keep
    the (F, r, c) product and its transform within 2^26 entries each (G is then never held whole)."""
    return c if not row_sums else max(1, min(c, (2**26) // max(1, n_f * c)))


def _self_correlation(M: torch.Tensor, *, row_sums: bool = False) -> tuple[torch.Tensor, int, str]:
    """``G[i, j, τ] = Σ_(l, x) M[i, l, x + τ] M[j, l, x]`` for all lags, by the cheaper formulation.

    M is (c, c', h, w) with its lags centred; G is (c, c, 2h − 1, 2w − 1), centred. Spatial self-convolution
    (``conv2d(M, M)``) costs ``2 c² c' (h w)(2h − 1)(2w − 1)`` flops; the frequency domain costs one rfft2, a
    product of the c×c' blocks on ``n_h (n_w/2 + 1)`` frequencies (8 c² c' flops each) and one
    irfft2, on the smallest FFT-friendly grid ≥ 2h − 1 (no aliasing: the lags are exact). The spatial form wins
    while the iterate is small (first steps, small kernels), the frequency form after. The FFTs run over the
    contiguous last dimensions. With ``row_sums=True`` it returns ``Σ_(j, τ) |G[i, j, τ]|`` (c,) instead of G
    (the last step of :func:`kernel_gram_iteration`): the sums are taken on the whole grid, whose entries outside
    the lags are zero up to rounding (counting them only enlarges the bound), in blocks of rows, so that G is never
    held whole. Returns ``(G or row sums, N, how)``: the grid size that enters the rounding bound and the
    formulation used.
    """
    c, cp, h, w = M.shape
    H, W, nh, nw = _grid_sizes(h, w)
    if _use_spatial(M):
        G = F.conv2d(M, M, padding=(h - 1, w - 1))
        return (G.abs().sum(dim=(1, 2, 3)) if row_sums else G), H * W, "spatial"
    # large grids on the CPU without autograd: scipy's FFT, frequency axes first (measured faster from ~2·10⁶
    # block entries on; below, torch.fft is: 64 channels, 2 threads: 54 vs 78 ms at 9×9 lags, 408 vs 269 at 17×17)
    big = nh * (nw // 2 + 1) * c * cp >= 1 << 21
    if big and M.device.type == "cpu" and not (torch.is_grad_enabled() and M.requires_grad):
        return _self_correlation_pocketfft(M, row_sums=row_sums)
    Mf = torch.fft.rfft2(M, s=(nh, nw))  # (c, c', nh, nw//2+1), over the contiguous last dims
    Mf = Mf.permute(2, 3, 0, 1).reshape(-1, c, cp)  # (F, c, c'): a strided view, the product gathers its blocks
    # the conjugate transpose materialised once, contiguous: the batched product of a lazily conjugated or
    # transposed operand copies every block first (Note [shared CPU] in _dense.py)
    Mh = Mf.mH.contiguous()  # (F, c', c)
    step = _row_block(c, Mf.shape[0], row_sums)
    out = []
    for i in range(0, c, step):
        rows = slice(i, min(c, i + step))
        P = (Mf if step == c else Mf[:, rows].contiguous()) @ Mh  # (F, r, c)
        P = P.reshape(nh, nw // 2 + 1, -1, c).permute(2, 3, 0, 1)  # (r, c, nh, nw//2+1)
        G = torch.fft.irfft2(P, s=(nh, nw))  # (r, c, nh, nw), lag τ at index τ mod n
        out.append(G.abs().sum(dim=(1, 2, 3)) if row_sums else G)
    if row_sums:
        return torch.cat(out), nh * nw, "frequency"
    G = out[0]
    # lags −(h−1)…h−1: the negative ones sit at the end of each axis
    G = torch.cat([G[..., nh - (h - 1) :, :], G[..., :h, :]], dim=-2)
    G = torch.cat([G[..., nw - (w - 1) :], G[..., :w]], dim=-1)
    return G.contiguous(), nh * nw, "frequency"


def _self_correlation_pocketfft(M: torch.Tensor, *, row_sums: bool) -> tuple[torch.Tensor, int, str]:
    """The frequency form of :func:`_self_correlation` on the CPU without autograd, by scipy's FFT.

    The same arithmetic (rfft2 on the smallest FFT-friendly grid, the c×c' products ``M̂(ω) M̂(ω)ᴴ``, irfft2), laid
    out for the CPU: the transforms run over the two *leading* axes of a (h, w, c, c') array, so each frequency's
    block comes out contiguous for the batched product (torch's layout makes it a strided view, which the product
    gathers), and scipy's pocketfft transforms with ``torch.get_num_threads()`` workers. Last step of the 64-channel
    3×3 kernel at T = 6 (135×135 grid, 2 threads): 4.7 s wall (rfft2 0.6, conjugate-transpose copy 0.4, batched
    product 0.7, irfft2 1.3, |·| sums 0.4, the rest allocation) against 5.8 s for the torch form (rfft2 1.1, copy
    0.7, product on strided blocks 1.8, irfft2 1.4); the whole T = 6 bound 6.8 s against 7.8 s
    (``benchmarks/bench_norms.py``). Used for large grids without autograd only. pocketfft is a mixed-radix
    Cooley–Tukey FFT on these 2^a 3^b 5^c sizes, so the rounding bound of Note [certified rounding] in
    ``_dense.py`` holds as for torch's.
    """
    import numpy as np
    import scipy.fft

    c, cp, h, w = M.shape
    _, _, nh, nw = _grid_sizes(h, w)
    nw2 = nw // 2 + 1
    workers = max(1, torch.get_num_threads())
    A = M.detach().permute(2, 3, 0, 1).contiguous().numpy()  # (h, w, c, c'): lags first
    Mf = torch.from_numpy(scipy.fft.rfft2(A, s=(nh, nw), axes=(0, 1), workers=workers)).reshape(-1, c, cp)
    Mh = Mf.mH.contiguous()  # (F, c', c), materialised once (a lazily conjugated operand is copied per product)
    step = _row_block(c, Mf.shape[0], row_sums)
    out = []
    for i in range(0, c, step):
        P = (Mf if step == c else Mf[:, i : i + step].contiguous()) @ Mh  # (F, r, c)
        G = scipy.fft.irfft2(P.numpy().reshape(nh, nw2, -1, c), s=(nh, nw), axes=(0, 1), workers=workers)
        out.append(np.abs(G).sum(axis=(0, 1, 3)) if row_sums else G)  # G: (nh, nw, r, c), lag τ at τ mod n
    if row_sums:
        return torch.from_numpy(np.concatenate(out)), nh * nw, "frequency"
    G = out[0]
    G = np.concatenate([G[nh - (h - 1) :], G[:h]], axis=0)  # lags −(h−1)…h−1
    G = np.concatenate([G[:, nw - (w - 1) :], G[:, :w]], axis=1)
    return torch.from_numpy(np.ascontiguousarray(G.transpose(2, 3, 0, 1))), nh * nw, "frequency"

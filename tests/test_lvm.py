"""Tests of stabkit.certify._lvm: simplex maps, LVM statistics of the sampler, LVM-RS certificates."""

import itertools

import numpy as np
import pytest
import torch

from stabkit.certify._smoothing import _root_seed, block_seed
from stabkit.certify.smoothing import (
    MAP_LIPSCHITZ,
    SELECTIONS,
    TEMPERATURES,
    Smooth,
    certify_from_log,
    lvm_certify,
    simplex_maps,
    sparsemax,
)


def _project_brute_force(z: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex by enumerating supports: on support S the projection is
    z_S − (Σ z_S − 1)/|S|; keep the feasible candidate closest to z."""
    best, best_dist = None, np.inf
    for size in range(1, len(z) + 1):
        for support in itertools.combinations(range(len(z)), size):
            p = np.zeros_like(z)
            s = list(support)
            p[s] = z[s] - (z[s].sum() - 1) / size
            if (p >= -1e-12).all() and np.sum((p - z) ** 2) < best_dist:
                best, best_dist = p, np.sum((p - z) ** 2)
    return best


def _linear(d, seed, classes=2):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(classes, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    return lin


def test_sparsemax_is_the_projection_onto_the_simplex():
    rng = np.random.default_rng(0)
    for trial in range(300):
        c = int(rng.integers(2, 7))
        z = rng.normal(size=c) * rng.choice([0.1, 1.0, 10.0])
        if trial % 10 == 0:
            z[1] = z[0]  # ties
        ours = sparsemax(torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(ours, _project_brute_force(z), atol=1e-12)


def test_sparsemax_properties():
    z = torch.randn(5, 4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = sparsemax(z, dim=1)
    assert p.shape == z.shape and bool((p >= 0).all())
    torch.testing.assert_close(p.sum(dim=1), torch.ones(5, 7, dtype=torch.float64))
    torch.testing.assert_close(sparsemax(z + 3.0, dim=1), p)  # shift invariance
    torch.testing.assert_close(p, sparsemax(z.transpose(1, 2)).transpose(1, 2))


def test_sparsemax_huge_logits_in_float32():
    z = torch.tensor([[0.3, -1.2, 0.1, 2.0]], dtype=torch.float32) * 1e7
    torch.testing.assert_close(sparsemax(z), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    tied = torch.tensor([[5.0, 5.0, -1.0]]) * 1e7
    torch.testing.assert_close(sparsemax(tied), torch.tensor([[0.5, 0.5, 0.0]]))


def test_simplex_maps_shapes_and_limits():
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    temps = torch.tensor([0.5, 1.0, 1e7], dtype=torch.float64)
    s = simplex_maps(z, temperatures=temps, kinds=("softmax", "sparsemax"))
    assert s.shape == (6, 2, 3, 5)
    torch.testing.assert_close(s[:, 0, 0], torch.softmax(0.5 * z, dim=-1))
    torch.testing.assert_close(s[:, 1, 1], sparsemax(z))
    onehot = torch.nn.functional.one_hot(z.argmax(dim=1), 5).double()
    torch.testing.assert_close(s[:, 0, 2], onehot)  # huge temperature: both maps are the argmax
    torch.testing.assert_close(s[:, 1, 2], onehot)


def test_temperature_grid_is_the_published_one():
    assert len(TEMPERATURES) == 102
    assert TEMPERATURES[0] == 1.0 and TEMPERATURES[-1] == 1e7
    np.testing.assert_allclose(TEMPERATURES[1:-1], np.linspace(0.1, 50, 100))


def test_logged_statistics_match_a_direct_computation():
    # one noise block per stream (n ≤ noise_block_rows): each block is drawn from its own seeded generator
    # (Note [noise stream])
    lin = _linear(3, 0, classes=4)
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    temps = np.array([0.5, 2.0, 10.0])
    log = Smooth(lin, 4, 0.7, exact_linear=False).sample(  # the input-space stream, drawn again below
        x, n0=50, n=400, batch_size=1000, temperatures=temps, generator=torch.Generator().manual_seed(2)
    )
    root = _root_seed(torch.Generator().manual_seed(2))
    for stage, n, mean, var, counts in (
        ("selection", 50, log.mean_selection, log.var_selection, log.counts_selection),
        ("estimation", 400, log.mean_estimation, log.var_estimation, log.counts_estimation),
    ):
        g = torch.Generator().manual_seed(block_seed(root, 0, stage, 0))
        logits = lin(x + 0.7 * torch.randn((n, 3), generator=g, dtype=torch.float64)).detach()
        s = simplex_maps(logits, temperatures=torch.from_numpy(temps))  # (n, K, T, C)
        np.testing.assert_allclose(mean[0], s.mean(dim=0).numpy(), atol=1e-12)
        np.testing.assert_allclose(var[0], s.var(dim=0).numpy(), atol=1e-12)  # unbiased
        np.testing.assert_array_equal(counts[0], np.bincount(logits.argmax(dim=1).numpy(), minlength=4))


def test_variance_obeys_gaussian_poincare():
    # Var s(τ f(x+δ))_c ≤ σ² Lip² with Lip = MAP_LIPSCHITZ · τ · ‖W‖₂ (arXiv 2309.16883); slack for the sampling
    # error
    sigma = 0.5
    lin = _linear(4, 3, classes=3)
    lip = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    temps = np.array([0.1, 0.3, 1.0, 3.0])
    log = Smooth(lin, 3, sigma).sample(x, n0=0, n=4000, temperatures=temps)
    for k, kind in enumerate(log.map_kinds):
        bound = (sigma * MAP_LIPSCHITZ[kind] * temps * lip) ** 2  # (T,)
        assert np.all(log.var_estimation[:, k].max(axis=-1) <= 1.15 * bound)


def _distance(lin, x):
    w = lin.weight[0] - lin.weight[1]
    return ((x @ w + lin.bias[0] - lin.bias[1]).abs() / w.norm()).detach()


def test_lvm_certificates_never_exceed_the_linear_radius():
    # the soft smoothed classifiers of a two-class linear model share its hyperplane (the maps are symmetric
    # in the logit difference), so the distance to it is the exact radius of every LVM candidate
    sigma = 0.5
    temps = TEMPERATURES[::10]
    checked = 0
    for seed in range(3):
        lin = _linear(4, seed)
        x = torch.randn(15, 4, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        log = Smooth(lin, 2, sigma).sample(
            x, n0=200, n=4000, temperatures=temps, generator=torch.Generator().manual_seed(seed)
        )
        dist = _distance(lin, x)
        side = lin(x).argmax(dim=1)
        for selection in ("separate-samples", "bonferroni-maps"):
            # α = 1e-5: at 1e-3 a valid certificate fails with probability up to 1e-3 per point (one did here)
            cert = lvm_certify(log, alpha=1e-5, selection=selection)
            ok = cert.prediction >= 0
            assert bool((cert.radius[ok] <= dist[ok] + 1e-12).all())
            assert bool((cert.prediction[ok] == side[ok]).all())
            checked += int(ok.sum())
    assert checked > 60


def test_bonferroni_over_maps_never_beats_published_selection():
    lin = _linear(4, 9, classes=3)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    log = Smooth(lin, 3, 0.5).sample(x, n0=100, n=2000, temperatures=TEMPERATURES[::5])
    published = lvm_certify(log, selection="published")
    corrected = lvm_certify(log, selection="bonferroni-maps")
    assert bool((corrected.radius <= published.radius + 1e-12).all())
    # the published rule contains the argmax map with Bonferroni over classes: never below that certificate
    bonf = certify_from_log(log, method="bonferroni")
    assert bool((published.radius >= bonf.radius - 1e-12).all())
    assert set(published.map_kind) <= {"argmax", "softmax", "sparsemax"}
    assert set(published.radius_kind) <= {"multi", "margin"}


def test_lipschitz_aware_radii_dominate():
    lin = _linear(4, 5)
    lip = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    log = Smooth(lin, 2, 0.5).sample(x, n0=100, n=2000, temperatures=np.array([0.5, 2.0, 1e7]))
    plain = lvm_certify(log, selection="bonferroni-maps")
    aware = lvm_certify(log, selection="bonferroni-maps", lipschitz=lip)
    assert bool((aware.radius >= plain.radius - 1e-12).all())
    assert bool((aware.radius <= _distance(lin, x) + 1e-12).all())


def test_bad_input():
    log = Smooth(torch.nn.Linear(2, 3), 3, 0.5).sample(torch.zeros(1, 2), n0=10, n=100)
    with pytest.raises(ValueError, match="no LVM statistics"):
        lvm_certify(log)
    log = Smooth(torch.nn.Linear(2, 3), 3, 0.5).sample(torch.zeros(1, 2), n0=0, n=100, temperatures=[1.0])
    with pytest.raises(ValueError, match="selection"):
        lvm_certify(log, selection="best")
    with pytest.raises(ValueError, match="n0 >= 2"):
        lvm_certify(log, selection="separate-samples")
    with pytest.raises(ValueError, match="lipschitz"):
        lvm_certify(log, lipschitz=-1.0)
    with pytest.raises(ValueError, match="map kinds"):
        Smooth(torch.nn.Linear(2, 3), 3, 0.5).sample(torch.zeros(1, 2), n=10, temperatures=[1.0], map_kinds=("x",))
    assert SELECTIONS[0] == "published"

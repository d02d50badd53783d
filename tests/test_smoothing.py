"""Tests of stabkit.certify._smoothing: sampling, PREDICT/CERTIFY, logs, Gaussian augmentation.

Ground truth: a two-class linear classifier f(x) = argmax(Wx + b) is its own smoothed classifier, and its
exact robust radius at x is the distance to the hyperplane, d(x) = |w·x + c| / ‖w‖ (w = W_0 − W_1, c = b_0 −
b_1); the top class has probability Φ(d(x)/σ) under noise (Cohen et al. 2019, §3.1).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from stabkit.certify import ABSTAIN
from stabkit.certify._smoothing import merge_logs
from stabkit.certify.smoothing import (
    Smooth,
    SmoothCertificate,
    SmoothingLog,
    certify_from_log,
    gaussian_augment,
    load_log,
    save_log,
)


def _linear(d: int, seed: int, classes: int = 2) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(classes, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    return lin


def _distance(lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = lin.weight[0] - lin.weight[1]
    c = lin.bias[0] - lin.bias[1]
    return ((x @ w + c).abs() / w.norm()).detach()


def _side(lin, x):
    return lin(x).argmax(dim=1)


def _points(d, n_points, seed, scale=1.0):
    g = torch.Generator().manual_seed(1000 + seed)
    return scale * torch.randn(n_points, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("exact_linear", [True, False])
def test_linear_radius_never_exceeds_distance(exact_linear):
    # a certificate fails with probability ≤ α per point: at α = 1e-5 none of the ~240 may fail, at α = 1e-3
    # (where one failure among 240 has happened at these seeds) the failure count stays within binomial error
    sigma, d = 0.5, 4
    n = 2000 if exact_linear else 500
    seeds = range(6) if exact_linear else range(2)
    n_certified, n_failed = 0, 0
    for seed in seeds:
        lin = _linear(d, seed)
        model = lin if exact_linear else torch.nn.Sequential(lin)  # exact_linear=False: the generic noise path
        x = _points(d, 40, seed)
        smooth = Smooth(model, 2, sigma, exact_linear=exact_linear)
        log = smooth.sample(x, n0=100, n=n, batch_size=512, generator=torch.Generator().manual_seed(seed))
        dist, side = _distance(lin, x), _side(lin, x)
        for alpha in (1e-5, 1e-3):
            cert = certify_from_log(log, alpha=alpha)
            ok = cert.prediction != ABSTAIN
            failed = ((cert.radius > dist) | (cert.prediction != side)) & ok
            assert bool((cert.radius[~ok] == 0).all())
            if alpha == 1e-5:
                assert not bool(failed.any())
                n_certified += int(ok.sum())
            else:
                n_failed += int(failed.sum())
    assert n_certified > 0.5 * 40 * len(seeds)  # the property was checked on many certificates
    assert n_failed <= 3  # P(more than 3 failures among 240 at α = 1e-3) < 1e-4


def test_linear_radius_approaches_distance():
    sigma, d = 0.25, 3
    lin = _linear(d, 7)
    x = _points(d, 30, 7, scale=0.5)
    dist = _distance(lin, x)
    keep = (dist > 0.05) & (dist < 0.6)  # p_A between Φ(0.2) and Φ(2.4): far enough from both ends
    x, dist = x[keep], dist[keep]
    ratios = []
    for n in (100, 1000, 10_000, 100_000):
        cert = Smooth(lin, 2, sigma).certify(x, n0=100, n=n, generator=torch.Generator().manual_seed(n))
        ratios.append(float((cert.radius / dist).mean()))
    assert ratios == sorted(ratios)
    assert 0.9 < ratios[-1] <= 1.0


def test_counts_follow_exact_probability():
    # both noise paths sample P(class A) = Φ(d/σ); check each count within 5 binomial standard deviations
    sigma, n = 0.5, 20_000
    lin = _linear(3, 3)
    x = _points(3, 5, 3, scale=0.5)
    p_true = stats.norm.cdf((_distance(lin, x) / sigma).numpy())
    side = _side(lin, x).numpy()
    for exact in (True, False):
        log = Smooth(lin, 2, sigma, exact_linear=exact).sample(x, n0=0, n=n, generator=torch.Generator().manual_seed(1))
        k = log.counts_estimation[np.arange(len(x)), side]
        assert np.all(np.abs(k - n * p_true) < 5 * np.sqrt(n * p_true * (1 - p_true)) + 1)
        assert np.all(log.counts_estimation.sum(axis=1) == n)


def test_same_generator_same_certificate():
    model = torch.nn.Sequential(_linear(5, 0), torch.nn.ReLU(), _linear(2, 1, classes=3))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smooth = Smooth(model, 3, 1.0)

    def run(seed):
        return smooth.certify(x, n0=50, n=700, batch_size=256, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    for fa, fb in zip(a, b, strict=True):
        assert torch.equal(fa, fb)
    assert not torch.equal(a.p_a, c.p_a)
    # None means a fresh generator seeded with 0: deterministic too
    assert torch.equal(smooth.certify(x, n0=50, n=700).p_a, run(0).p_a)


def _shards_merged(smooth, x, parts, batch_sizes, seed, **kw):
    logs = [
        smooth.sample(x[idx], indices=idx, batch_size=bs, generator=torch.Generator().manual_seed(seed), **kw)
        for idx, bs in zip(parts, batch_sizes, strict=True)
    ]
    return merge_logs(logs[::-1], n_points=len(x))  # shard order does not matter


def _assert_same_log(a, b):
    for name in ("counts_selection", "counts_estimation", "mean_selection", "var_selection", "mean_estimation"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None and vb is None) or np.array_equal(va, vb), name
    assert np.array_equal(a.indices, b.indices) and a.seed == b.seed


@pytest.mark.parametrize(
    "kind", ["conv", "mlp-float64", "exact-linear", "lvm"], ids=["conv", "mlp-float64", "exact-linear", "lvm"]
)
def test_noise_is_batching_and_sharding_invariant(kind):
    # Note [noise stream]: a point's noise depends on (seed, global index, stage, n0, n) only, so any split of
    # the test set over workers and any batch sizes give one process's counts, sums and certificates
    g = torch.Generator().manual_seed(0)
    kw = {}
    if kind == "conv":
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
        x = torch.rand(7, 1, 6, 6, generator=g)
        n0, n = 30, 9000  # 9000 rows of 36 numbers: three noise blocks per point
    elif kind == "mlp-float64":
        model = torch.nn.Sequential(_linear(4, 0, classes=5), torch.nn.Tanh(), _linear(5, 1, classes=3))
        x = torch.randn(7, 4, generator=g, dtype=torch.float64)
        n0, n = 20, 5000
    elif kind == "exact-linear":
        model = _linear(4, 2, classes=4)
        x = torch.randn(7, 4, generator=g, dtype=torch.float64)
        n0, n = 20, 9000
    else:
        model = torch.nn.Sequential(_linear(4, 3, classes=3))
        x = torch.randn(7, 4, generator=g, dtype=torch.float64)
        n0, n = 10, 600
        kw = dict(temperatures=np.array([0.5, 2.0]))
    # the LVM kind keeps the generic (input-space) stream; "exact-linear" tests the logit-space one
    smooth = Smooth(model, 3 if kind != "exact-linear" else 4, 0.5, exact_linear=kind == "exact-linear")
    one = smooth.sample(x, n0=n0, n=n, batch_size=1000, generator=torch.Generator().manual_seed(4), **kw)
    parts = [np.array([5, 0, 3]), np.array([6]), np.array([1, 2, 4])]
    merged = _shards_merged(smooth, x, parts, [7, 4096, 333], 4, n0=n0, n=n, **kw)
    _assert_same_log(one, merged)
    for fa, fb in zip(certify_from_log(one, alpha=0.01), certify_from_log(merged, alpha=0.01), strict=True):
        assert torch.equal(fa, fb)
    # and the noise really is random: another seed, or the same point under another index, changes the counts
    other = smooth.sample(x, n0=n0, n=n, batch_size=1000, generator=torch.Generator().manual_seed(5), **kw)
    assert not np.array_equal(one.counts_estimation, other.counts_estimation)
    moved = smooth.sample(x, n0=n0, n=n, indices=np.arange(7) + 7, generator=torch.Generator().manual_seed(4), **kw)
    assert not np.array_equal(one.counts_estimation, moved.counts_estimation)


def test_exact_linear_path_samples_the_generic_distribution():
    # the exact path draws C − 1 normals through a root of the centred covariance: its class frequencies must
    # match the generic path's (independent draws) within binomial error, for 4 classes
    lin = _linear(3, 5, classes=4)
    x = _points(3, 4, 5, scale=0.3)
    n = 40_000
    exact = Smooth(lin, 4, 0.7).sample(x, n0=0, n=n, generator=torch.Generator().manual_seed(0))
    generic_smooth = Smooth(lin, 4, 0.7, exact_linear=False)
    generic = generic_smooth.sample(x, n0=0, n=n, generator=torch.Generator().manual_seed(1))
    p = (exact.counts_estimation + generic.counts_estimation) / (2 * n)
    diff = np.abs(exact.counts_estimation - generic.counts_estimation)
    assert np.all(diff <= 5 * np.sqrt(2 * n * p * (1 - p)) + 2)
    assert (p > 0.05).sum() >= 8  # several classes with real mass were compared


def test_affine_sequentials_take_the_exact_path_with_the_generic_distribution():
    # a Sequential of Flatten / Linear / Identity is affine: its logits are drawn in logit space with the
    # product of its weights; the class frequencies match the generic path's within binomial error
    g = torch.Generator().manual_seed(7)
    first, second = torch.nn.Linear(12, 6), torch.nn.Linear(6, 4)
    for layer in (first, second):
        torch.nn.init.normal_(layer.weight, generator=g)
        torch.nn.init.normal_(layer.bias, std=0.3, generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Sequential(first, torch.nn.Identity()), second)
    x = 0.1 * torch.randn(3, 1, 3, 4, generator=g)
    exact = Smooth(model, 4, 0.4)
    assert exact.exact_linear
    n = 40_000
    a = exact.sample(x, n0=0, n=n, generator=torch.Generator().manual_seed(0))
    b = Smooth(model, 4, 0.4, exact_linear=False).sample(x, n0=0, n=n, generator=torch.Generator().manual_seed(1))
    p = (a.counts_estimation + b.counts_estimation) / (2 * n)
    diff = np.abs(a.counts_estimation - b.counts_estimation)
    assert np.all(diff <= 5 * np.sqrt(2 * n * p * (1 - p)) + 2)
    assert (p > 0.05).sum() >= 6
    # not affine, or not recognisably so: the generic path
    lin = torch.nn.Linear(4, 3)
    for other in (
        torch.nn.Sequential(lin, torch.nn.ReLU()),
        torch.nn.Sequential(lin, torch.nn.Flatten()),  # a Flatten after a Linear
        torch.nn.Sequential(torch.nn.Flatten(start_dim=2), lin),
        torch.nn.Sequential(torch.nn.Identity()),  # no Linear
        torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(6, 3)),  # sizes do not chain
        torch.nn.Conv2d(1, 3, 1),
    ):
        assert not Smooth(other, 3, 0.5).exact_linear, other
    # an input whose size is not the first layer's: the generic path, whose forward reports the mismatch
    with pytest.raises(RuntimeError):
        Smooth(lin, 3, 0.5).sample(torch.zeros(2, 5), n0=0, n=10)


def test_merge_logs_checks_coverage_and_settings(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    smooth = Smooth(model, 3, 0.5)

    def shard(idx, seed=1, smooth=smooth, **kw):
        idx = np.asarray(idx)
        return smooth.sample(x[idx], n0=10, n=50, indices=idx, generator=torch.Generator().manual_seed(seed), **kw)

    a, b = shard([0, 1, 2]), shard([3, 4])
    paths = [save_log(a, tmp_path / "a.npz"), save_log(b, tmp_path / "b.npz")]
    merged = merge_logs(paths)
    assert merged.indices.tolist() == [0, 1, 2, 3, 4] and merged.seed == a.seed
    full = smooth.sample(x, n0=10, n=50, generator=torch.Generator().manual_seed(1))
    _assert_same_log(full, merged)
    with pytest.raises(ValueError, match="exactly once.*twice \\[2\\]"):
        merge_logs([a, shard([2, 3, 4])])
    with pytest.raises(ValueError, match="missing \\[5\\]"):
        merge_logs([a, b], n_points=6)
    with pytest.raises(ValueError, match="seed"):
        merge_logs([a, shard([3, 4], seed=2)])
    with pytest.raises(ValueError, match="sigma"):
        merge_logs([a, shard([3, 4], smooth=Smooth(model, 3, 0.25))])
    with pytest.raises(ValueError, match="no global indices"):
        merge_logs([a, b._replace(indices=None)])
    with pytest.raises(ValueError, match="at least one"):
        merge_logs([])
    with pytest.raises(ValueError, match="distinct"):
        smooth.sample(x[:2], n=10, indices=[3, 3])
    with pytest.raises(ValueError, match="indices must be 2 integers"):
        smooth.sample(x[:2], n=10, indices=[1.5, 2])


def test_certify_is_sample_then_cohen():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    smooth = Smooth(model, 3, 0.5)
    cert = smooth.certify(x, n0=30, n=400, alpha=0.01, generator=torch.Generator().manual_seed(3))
    log = smooth.sample(x, n0=30, n=400, generator=torch.Generator().manual_seed(3))
    again = certify_from_log(log, alpha=0.01, method="cohen")
    assert isinstance(cert, SmoothCertificate)
    for fa, fb in zip(cert, again, strict=True):
        assert torch.equal(fa, fb)
    # Cohen: p_a is the one-sided Clopper–Pearson lower bound of the selected class (scipy's exact beta
    # quantile)
    for i in range(len(x)):
        top = int(np.argmax(log.counts_selection[i]))
        k = int(log.counts_estimation[i, top])
        low = stats.beta.ppf(0.01, k, 400 - k + 1) if k > 0 else 0.0
        assert math.isclose(float(cert.p_a[i]), low, rel_tol=1e-9, abs_tol=1e-12)
        expected = 0.5 * stats.norm.ppf(low) if low > 0.5 else 0.0  # σ = 0.5
        assert math.isclose(float(cert.radius[i]), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_predict_abstains_on_the_boundary_and_is_right_far_from_it():
    lin = _linear(3, 11)
    w = (lin.weight[0] - lin.weight[1]).detach()
    c = (lin.bias[0] - lin.bias[1]).detach()
    x = _points(3, 30, 11)
    on = x - ((x @ w + c) / (w @ w))[:, None] * w  # projections onto the hyperplane: p_A = p_B = ½
    smooth = Smooth(lin, 2, 0.5)
    pred_on = smooth.predict(on, n=1000, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert bool((pred_on == ABSTAIN).all())
    far = on + 3.0 * w / w.norm() * torch.sign(torch.randn(30, 1, generator=torch.Generator().manual_seed(1)))
    pred_far = smooth.predict(far, n=1000, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pred_far, _side(lin, far))


def test_predict_uses_two_sided_binomial_test():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    x = 0.1 * torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    smooth = Smooth(model, 4, 1.0)
    pred = smooth.predict(x, n=200, alpha=0.05, generator=torch.Generator().manual_seed(4))
    log = smooth.sample(x, n0=0, n=200, generator=torch.Generator().manual_seed(4))
    for i, counts in enumerate(log.counts_estimation):
        k1, k2 = sorted(counts)[-1], sorted(counts)[-2]
        p = stats.binomtest(int(k1), int(k1 + k2), 0.5, alternative="two-sided").pvalue
        assert (int(pred[i]) == ABSTAIN) == (p > 0.05)
        if p <= 0.05:
            assert int(pred[i]) == int(np.argmax(counts))


def test_reference_cohen_radius():
    # [C] arXiv 2309.16883: one-sided CP lower bound of 99 000 / 100 000 at α = 0.001 is 0.988989 ⇒ R_mono(σ=0.25) =
    # 0.5725
    log = SmoothingLog(
        sigma=0.25, n0=100, n=100_000, labels=np.array([0]),
        counts_selection=np.array([[100, 0]]), counts_estimation=np.array([[99_000, 1_000]]),
    )  # fmt: skip
    cert = certify_from_log(log, alpha=0.001, method="cohen")
    assert float(cert.p_a[0]) == pytest.approx(0.988989, abs=1e-6)
    assert float(cert.radius[0]) == pytest.approx(0.5725, abs=5e-5)


def test_reference_cpm_bonferroni_cohen():
    # [C] arXiv 2504.02412: counts (59k, 26k, 8k, 4k, 2k, 1k, 0…), N = 1e5, σ = 0.5, α = 0.001
    counts = np.array([[59_000, 26_000, 8_000, 4_000, 2_000, 1_000, 0, 0, 0, 0]])
    log = SmoothingLog(
        sigma=0.5,
        n0=100_000,
        n=100_000,
        labels=np.array([0]),
        counts_selection=counts,
        counts_estimation=counts,
    )
    cpm = certify_from_log(log, alpha=0.001, method="cpm")
    assert float(cpm.p_a[0]) == pytest.approx(0.58470, abs=2e-5)
    assert float(cpm.p_b[0]) == pytest.approx(0.26474, abs=2e-5)
    assert float(cpm.radius[0]) == pytest.approx(0.21068, abs=2e-5)
    assert float(certify_from_log(log, alpha=0.001, method="bonferroni").radius[0]) == pytest.approx(0.21002, abs=2e-5)
    assert float(certify_from_log(log, alpha=0.001, method="cohen").radius[0]) == pytest.approx(0.10759, abs=2e-5)


def test_log_roundtrip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    log = Smooth(model, 3, 0.5).sample(
        x, n0=20, n=100, labels=torch.tensor([0, 1, 2]), temperatures=np.array([1.0, 10.0])
    )
    path = save_log(log, tmp_path / "sub" / "log.npz")
    back = load_log(path)
    assert back.sigma == log.sigma and back.n0 == log.n0 and back.n == log.n and back.map_kinds == log.map_kinds
    for name in ("labels", "counts_selection", "counts_estimation", "temperatures", "mean_estimation"):
        assert np.array_equal(getattr(back, name), getattr(log, name))
    assert back.mean_estimation.shape == (3, 2, 2, 3)
    for fa, fb in zip(certify_from_log(back, method="cpm"), certify_from_log(log, method="cpm"), strict=True):
        assert torch.equal(fa, fb)
    sub = log.subset(np.array([2]))
    assert sub.counts_estimation.shape == (1, 3) and sub.labels.tolist() == [2]


def test_training_mode_is_restored():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    Smooth(model, 2, 0.5).sample(torch.zeros(1, 2), n0=0, n=10)
    assert model.training


def test_gaussian_augment():
    augment = gaussian_augment(0.25)
    x = torch.zeros(20_000, 3)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert float(a.std()) == pytest.approx(0.25, rel=0.02)
    assert float(a.mean()) == pytest.approx(0.0, abs=0.01)


def test_bad_input():
    lin = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="sigma"):
        Smooth(lin, 3, 0.0)
    with pytest.raises(ValueError, match="num_classes"):
        Smooth(lin, 1, 0.5)
    smooth = Smooth(torch.nn.Sequential(lin), 3, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(torch.zeros(1, 2), n0=10, n=10, alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        smooth.certify(torch.full((1, 2), float("nan")), n0=10, n=10)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        smooth.certify(torch.zeros(2), n0=10, n=10)
    with pytest.raises(ValueError, match="num_classes"):
        Smooth(torch.nn.Sequential(lin), 4, 0.5).certify(torch.zeros(1, 2), n0=10, n=10)
    with pytest.raises(ValueError, match="n must be"):
        smooth.sample(torch.zeros(1, 2), n=0)
    log = smooth.sample(torch.zeros(1, 2), n0=0, n=10)
    with pytest.raises(ValueError, match="n0 > 0"):
        certify_from_log(log, method="cohen")
    with pytest.raises(ValueError, match="method"):
        certify_from_log(log, method="wilson")
    with pytest.raises(ValueError, match="npz"):
        save_log(log, "log.txt")
    with pytest.raises(ValueError, match="temperatures"):
        smooth.sample(torch.zeros(1, 2), n=10, temperatures=np.array([-1.0]))
    with pytest.raises(ValueError, match="labels"):
        smooth.sample(torch.zeros(1, 2), n=10, labels=np.array([0, 1]))

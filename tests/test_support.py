import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from stabkit import support

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"ci": {"n": 1}, "cpu": {"n": 1}, "full": {"n": 2}}
STD = dict(scale="ci", seed=0, device="cpu", data_root="data")


def make_ctx(**kw):
    return support.setup("01_sensitivity", presets=PRESETS, **{**STD, **kw})


def test_derive_seed_is_stable_and_key_dependent():
    # a fixed value: the seed of a stream must never change between versions (figures would change)
    assert support.derive_seed(0, "moons/data") == support.derive_seed(0, "moons/data")
    assert support.derive_seed(0, "a") != support.derive_seed(0, "b")
    assert support.derive_seed(0, "a") != support.derive_seed(1, "a")
    expected = int.from_bytes(hashlib.sha256(b"0/a").digest()[:8], "little") >> 1
    assert support.derive_seed(0, "a") == expected < 2**63


def test_generator_streams_are_reproducible():
    a = make_ctx().generator("x")
    b = make_ctx().generator("x")
    assert torch.equal(torch.randn(5, generator=a), torch.randn(5, generator=b))
    assert not torch.equal(torch.randn(5, generator=make_ctx().generator("y")), torch.randn(5, generator=a))


def test_seeded_restores_the_global_rng():
    ctx = make_ctx()
    state = torch.random.get_rng_state()
    with ctx.seeded("init"):
        w1 = torch.nn.Linear(3, 3).weight.detach().clone()
    assert torch.equal(torch.random.get_rng_state(), state)
    with ctx.seeded("init"):
        w2 = torch.nn.Linear(3, 3).weight.detach().clone()
    assert torch.equal(w1, w2)


def test_preset_attribute_access():
    assert make_ctx().preset.n == 1
    assert make_ctx(scale="full").preset.n == 2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(scale="medium"), "unknown scale 'medium'"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(seed=1.5), "seed must be a non-negative integer"),
        (dict(device="gpu0"), "not a torch device"),
        (dict(data_root=""), "data_root"),
        (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
    ],
)
def test_setup_rejects_invalid_values(kw, match):
    with pytest.raises(ValueError, match=match):
        make_ctx(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_setup_rejects_cuda_without_gpu():
    with pytest.raises(ValueError, match="torch sees no GPU"):
        make_ctx(device="cuda")


def test_setup_rejects_unknown_parameters_in_the_namespace():
    namespace = {**STD, "sacle": "full", "support": support, "_": None, "In": [], "PRESETS": PRESETS}
    with pytest.raises(ValueError, match="unknown notebook parameter.*sacle"):
        support.setup("01_sensitivity", namespace, presets=PRESETS, **STD)
    namespace.pop("sacle")
    support.setup("01_sensitivity", namespace, presets=PRESETS, **STD)  # no error


def test_setup_rejects_a_notebook_absent_from_the_manifest():
    with pytest.raises(ValueError, match="no entry in manifest.yaml"):
        support.setup("99_nothing", presets=PRESETS, **STD)


def test_save_figure_refuses_undeclared_stems(tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    fig, _ = support.figure()
    with pytest.raises(ValueError, match="not declared for notebook '01_sensitivity'"):
        make_ctx().save_figure(fig, "gi-overflow-typo")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_is_byte_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    digests = []
    for _ in range(2):
        ctx = make_ctx()
        fig, ax = support.figure(width="half")
        ax.plot([0, 1, 2], [1, 0, 2], label="a")
        ax.legend()
        assert ctx.save_figure(fig, "sensitivity-input") is None  # nothing displayed in a notebook
        digests.append(
            ((tmp_path / "sensitivity-input.png").read_bytes(), (tmp_path / "sensitivity-input.pdf").read_bytes())
        )
    assert digests[0] == digests[1]
    assert digests[0][0].startswith(b"\x89PNG") and digests[0][1].startswith(b"%PDF")
    assert b"CreationDate" not in digests[0][1]


def test_save_table_round_trip_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    ctx = make_ctx()
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1 / 3]})
    ctx.save_table(df, "sensitivity-training")
    back = ctx.load_table("sensitivity-training")
    pd.testing.assert_frame_equal(back, df, rtol=1e-7)
    prov = (tmp_path / "01_sensitivity.provenance.json").read_text()
    for key in ("git_commit", "torch", "scale", "seed", "device", "wall_time_s"):
        assert key in prov


def test_figure_rejects_bad_width():
    with pytest.raises(ValueError, match="width"):
        support.figure(width="huge")


def test_manifest_is_valid_and_every_notebook_exists():
    manifest = support.load_manifest()
    assert manifest, "manifest.yaml lists nothing"
    for entry in manifest.values():
        assert (ROOT / "notebooks" / f"{entry.notebook}.ipynb").exists(), entry
        assert entry.outputs


def test_manifest_rejects_duplicate_stems_and_missing_fields(tmp_path):
    base = (
        "chapter: 1\n    notebook: nb\n    title: t\n    runtime: {ci: 1 s, cpu: 1 s, full: 1 s}\n"
        "    full_needs_gpu: false"
    )
    (tmp_path / "m.yaml").write_text(
        f"entries:\n  a:\n    {base}\n    outputs: [x]\n  b:\n    {base}\n    outputs: [x]\n"
    )
    with pytest.raises(ValueError, match="claimed by 'a' and 'b'"):
        support.load_manifest(tmp_path / "m.yaml")
    (tmp_path / "m.yaml").write_text("entries:\n  a:\n    chapter: 1\n")
    with pytest.raises(ValueError, match="lacks"):
        support.load_manifest(tmp_path / "m.yaml")


def test_machine_info_names_torch():
    assert torch.__version__ in support.machine_info()


@pytest.fixture
def _restore_threads():
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


def test_setup_applies_the_threads_preset(_restore_threads):
    start = _restore_threads
    target = 2 if start == 1 else 1
    presets = {"ci": {"threads": target}, "cpu": {}, "full": {"threads": 0}}
    ctx = support.setup("01_sensitivity", presets=presets, **STD)
    assert torch.get_num_threads() == target and ctx.preset.threads == target
    # 0 (and an absent key) leave the current setting alone
    support.setup("01_sensitivity", presets=presets, **{**STD, "scale": "full"})
    assert torch.get_num_threads() == target
    make_ctx()
    assert torch.get_num_threads() == target


@pytest.mark.parametrize("threads", [-1, 1.5, True, "2"])
def test_setup_rejects_a_bad_threads_preset(threads, _restore_threads):
    presets = {"ci": {"threads": threads}, "cpu": {}, "full": {}}
    with pytest.raises(ValueError, match="threads must be a non-negative integer"):
        support.setup("01_sensitivity", presets=presets, **STD)
    assert torch.get_num_threads() == _restore_threads


def test_median_time_returns_the_value_and_a_median():
    calls = []
    timing = support.median_time(lambda: calls.append(1) or 42, repeats=3)
    assert timing.value == 42 and len(calls) == 4 and timing.seconds >= 0
    with pytest.raises(ValueError, match="repeats"):
        support.median_time(lambda: None, repeats=0)


# ------------------------------------------------------------------------------------------------ claims
ENTRY = "sensitivity-input"  # an entry of 01_sensitivity


def test_claim_match_within_tolerance_is_reproduced_and_outside_contradicted():
    ctx = make_ctx()
    c = ctx.claim(ENTRY, "exact is 83.092", 83.10, published=83.092, rtol=1e-3)
    assert c.verdict == "reproduced" and c.scale == "ci" and c.interval is None
    c = ctx.claim(ENTRY, "exact is 83.092 (tight)", 83.2, published=83.092, rtol=1e-4, atol=1e-3)
    assert c.verdict == "contradicted" and "0.108" in c.reason
    # the published number inside our interval reproduces, whatever the tolerance
    c = ctx.claim(ENTRY, "ci", 0.5, interval=(0.4, 0.7), uncertainty="u", published=0.62)
    assert c.verdict == "reproduced"
    c = ctx.claim(ENTRY, "ci2", 0.5, interval=(0.4, 0.6), uncertainty="u", published=0.62)
    assert c.verdict == "contradicted"


@pytest.mark.parametrize(
    ("expect", "interval", "verdict"),
    [
        (">", (0.1, 0.3), "reproduced"),
        (">", (-0.1, 0.3), "not significant at this scale"),
        (">", (-0.3, 0.0), "contradicted"),  # 0 is not > 0
        ("<", (-0.3, -0.1), "reproduced"),
        ("<", (-0.3, 0.2), "not significant at this scale"),
        ("<", (0.0, 0.2), "contradicted"),
    ],
)
def test_claim_threshold_verdicts_use_the_whole_interval(expect, interval, verdict):
    value = sum(interval) / 2
    c = make_ctx().claim(ENTRY, "s", value, interval=interval, uncertainty="u", expect=expect, threshold=0.0)
    assert c.verdict == verdict


@pytest.mark.parametrize(
    ("expect", "value", "verdict"),
    [(">", 1.0, "reproduced"), (">", 0.0, "contradicted"), ("<", -1.0, "reproduced"), ("<", 2.0, "contradicted")],
)
def test_claim_threshold_without_interval_uses_the_value(expect, value, verdict):
    assert make_ctx().claim(ENTRY, "s", value, expect=expect, threshold=0.0).verdict == verdict


def test_claim_not_comparable_keeps_the_reason():
    c = make_ctx().claim(
        ENTRY, "GPU speed-up", 3.0, published=60.0, not_comparable="published speed-up is a GPU timing"
    )
    assert c.verdict == "not comparable" and c.reason == "published speed-up is a GPU timing"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(entry="gi-overflow"), "not a manifest entry of notebook '01_sensitivity'"),
        (dict(statement=" "), "needs its statement"),
        (dict(value=float("nan")), "value is NaN"),
        (dict(value="high"), "value must be a real number"),
        (dict(value=True), "value must be a real number"),
        (dict(published=None), "needs the published number"),
        (dict(interval=(2.0, 1.0), uncertainty="u"), "above high"),
        (dict(interval=(1.0, 2.0)), "needs its uncertainty text"),
        (dict(interval=(1.0,), uncertainty="u"), r"\(low, high\)"),
        (dict(expect="≈"), "expect must be"),
        (dict(rtol=-1.0), "non-negative"),
        (dict(not_comparable=""), "non-empty reason"),
    ],
)
def test_claim_rejects_bad_input(kw, match):
    args = {"entry": ENTRY, "statement": "s", "value": 1.0, "published": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        make_ctx().claim(args.pop("entry"), args.pop("statement"), args.pop("value"), **args)


def test_save_claims_writes_csv_prints_table_and_replaces_repeats(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    ctx = make_ctx()
    ctx.claim(ENTRY, "acc | above chance", 0.3, expect=">", threshold=0.1)
    ctx.claim(
        ENTRY, "acc | above chance", 0.6, interval=(0.5, 0.7), uncertainty="95% CP, n=9", expect=">", threshold=0.1
    )  # a re-run cell replaces the claim
    ctx.claim(ENTRY, "exact", 1.0, published=1.0)
    assert ctx.save_claims() is None
    out = capsys.readouterr().out
    assert "acc | above chance" in out and "0.6 [0.5, 0.7] (> 0.1)" in out and "reproduced" in out
    df = pd.read_csv(tmp_path / "01_sensitivity.claims.csv")
    assert list(df.columns) == list(support.CLAIM_COLUMNS)
    assert len(df) == 2 and df["value"].tolist() == [0.6, 1.0] and df["low"].tolist()[0] == 0.5
    assert df["scale"].eq("ci").all() and df["verdict"].eq("reproduced").all()
    assert "01_sensitivity.claims.csv" in (tmp_path / "01_sensitivity.provenance.json").read_text()


def test_save_claims_without_claims_writes_the_header(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    make_ctx().save_claims()
    assert "no claims recorded" in capsys.readouterr().out
    assert (tmp_path / "01_sensitivity.claims.csv").read_text().strip() == ",".join(support.CLAIM_COLUMNS)


def test_binomial_interval_matches_clopper_pearson_by_beta_quantiles():
    from scipy.stats import beta

    for k, n in [(0, 10), (3, 10), (10, 10), (449, 449), (200, 449)]:
        low, high = support.binomial_interval(k, n, confidence=0.9)
        ref_low = 0.0 if k == 0 else beta.ppf(0.05, k, n - k + 1)
        ref_high = 1.0 if k == n else beta.ppf(0.95, k + 1, n - k)
        assert low == pytest.approx(ref_low, abs=1e-10) and high == pytest.approx(ref_high, abs=1e-10)
        assert low <= k / n <= high
    for bad in [(3, 2), (-1, 4), (1, 0), (1.5, 4), (True, 4)]:
        with pytest.raises(ValueError):
            support.binomial_interval(*bad)
    with pytest.raises(ValueError, match="confidence"):
        support.binomial_interval(1, 2, confidence=1.0)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    import numpy as np

    x = np.random.default_rng(0).normal(2.0, 1.0, size=200)
    a = support.bootstrap_interval(x, seed=1)
    assert a == support.bootstrap_interval(x, seed=1) != support.bootstrap_interval(x, seed=2)
    assert a[0] < x.mean() < a[1] and a[1] - a[0] < 0.5
    # the normal-theory interval of the mean has about the same width
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (a[1] - a[0]) == pytest.approx(2 * half, rel=0.2)
    med = support.bootstrap_interval(x, statistic=np.median, seed=0, n_resamples=500)
    assert med[0] < np.median(x) < med[1]
    assert support.bootstrap_interval([3.0, 3.0, 3.0], seed=0) == (3.0, 3.0)
    assert support.bootstrap_interval([0.0, 0.0, 0.0, 1.0], seed=0)[1] <= 1.0  # BCa degenerates: still finite
    for bad in ([1.0], [1.0, float("inf")]):
        with pytest.raises(ValueError, match="finite samples"):
            support.bootstrap_interval(bad, seed=0)


def test_bootstrap_interval_is_batched_and_equals_scipys_unbatched_interval():
    # batches of ≤ 2^22 numbers bound the memory of BCa's jackknife (O(n²) unbatched); at n = 5 000 the batch is
    # 838 resamples, and scipy's interval is the same as in one batch
    import numpy as np
    from scipy.stats import bootstrap

    x = np.random.default_rng(3).exponential(size=5000)
    ref = bootstrap((x,), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(4))
    ours = support.bootstrap_interval(x, seed=4)
    assert ours == (float(ref.confidence_interval.low), float(ref.confidence_interval.high))


def test_seed_interval_is_mean_and_range():
    assert support.seed_interval([1.0, 2.0, 6.0]) == (3.0, (1.0, 6.0))
    assert support.seed_interval([0.5]) == (0.5, (0.5, 0.5))
    with pytest.raises(ValueError):
        support.seed_interval([])
    with pytest.raises(ValueError):
        support.seed_interval([1.0, float("nan")])


# ------------------------------------------------------------------------------------- outputs and runs
def test_a_run_by_hand_writes_under_build_never_into_the_references(monkeypatch):
    monkeypatch.delenv("STABKIT_FIGURES_DIR", raising=False)
    assert support.figures_dir("full") == ROOT / "build" / "full" / "figures"
    assert make_ctx(scale="full").figures_dir == ROOT / "build" / "full" / "figures"
    assert support.reference_dir("ci") == ROOT / "figures" / "ci"
    with pytest.raises(ValueError, match="unknown scale"):
        support.figures_dir("medium")


def test_save_figure_displays_the_png_it_wrote_in_a_kernel(tmp_path, monkeypatch):
    import IPython.display

    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    shown = []
    monkeypatch.setattr(support, "_in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fig, ax = support.figure()
    ax.plot([0, 1])
    make_ctx().save_figure(fig, "sensitivity-input")
    assert len(shown) == 1 and shown[0].data == (tmp_path / "sensitivity-input.png").read_bytes()
    monkeypatch.setattr(support, "_in_kernel", lambda: False)
    fig, _ = support.figure()
    make_ctx().save_figure(fig, "sensitivity-input")
    assert len(shown) == 1  # outside a kernel nothing is shown


def test_provenance_identifies_the_run(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("STABKIT_FIGURES_DIR", str(tmp_path))
    make_ctx().save_table(pd.DataFrame({"a": [1]}), "sensitivity-training")
    prov = json.loads((tmp_path / "01_sensitivity.provenance.json").read_text())
    for key in (*support.PROVENANCE_PACKAGES, "torch_threads", "cpu", "gpu", "git_dirty", "git_commit"):
        assert key in prov, key
    assert prov["numpy"] == __import__("numpy").__version__ and prov["torch_threads"] == torch.get_num_threads()
    assert prov["git_dirty"] in (True, False, None)


def test_checkpoint_path_depends_on_parameters_and_lives_under_build():
    a = make_ctx().checkpoint_path("cpl/train")
    assert a.parent == ROOT / "build" / "ci" / "checkpoints" / "01_sensitivity" and a.parent.is_dir()
    assert a.name.startswith("cpl_train-") and a.suffix == ".pt"
    assert make_ctx().checkpoint_path("cpl/train") == a
    assert make_ctx(seed=1).checkpoint_path("cpl/train") != a
    with pytest.raises(ValueError, match="non-empty"):
        make_ctx().checkpoint_path("")


def test_progress_and_download_preset_keys(monkeypatch):
    monkeypatch.delenv("STABKIT_PROGRESS", raising=False)
    monkeypatch.delenv("STABKIT_DOWNLOAD", raising=False)
    presets = {"ci": {"progress": False, "download": False}, "cpu": {}, "full": {"progress": True, "download": True}}
    ci = support.setup("01_sensitivity", presets=presets, **STD)
    assert ci.progress is False and ci.preset.download is False
    assert support.setup("01_sensitivity", presets=presets, **{**STD, "scale": "full"}).progress is True
    monkeypatch.setenv("STABKIT_PROGRESS", "1")
    monkeypatch.setenv("STABKIT_DOWNLOAD", "1")
    ci = support.setup("01_sensitivity", presets=presets, **STD)
    assert ci.progress is True and ci.preset.download is True
    assert presets["ci"]["download"] is False  # the notebook's dict is not modified
    with pytest.raises(ValueError, match="preset key progress must be True or False"):
        support.setup("01_sensitivity", presets={"ci": {"progress": 1}, "cpu": {}, "full": {}}, **STD)


def test_manifest_tolerances_default_and_override(tmp_path):
    base = (
        "chapter: 1\n    notebook: nb\n    title: t\n    runtime: {ci: 1 s, cpu: 1 s, full: 1 s}\n"
        "    full_needs_gpu: false"
    )
    (tmp_path / "m.yaml").write_text(
        "default_tolerance: {rtol: 1e-5, atol: 0}\nentries:\n"
        f"  a:\n    {base}\n    outputs: [x]\n"
        f"  b:\n    {base}\n    outputs: [y]\n    tolerance: {{kind: statistical, rtol: 0.05,"
        " columns: {acc: {atol: 0.02}}, ignore: [seconds]}\n"
    )
    m = support.load_manifest(tmp_path / "m.yaml")
    assert m["a"].tolerance == support.Tolerance("deterministic", 1e-5, 0.0, {}, (), 0.0)
    assert m["b"].tolerance == support.Tolerance("statistical", 0.05, 0.0, {"acc": (0.05, 0.02)}, ("seconds",), 0.0)
    for bad, match in [("{rtol: -1}", "rtol must be a non-negative"), ("{kind: loose}", "kind must be"),
                       ("{rtl: 1}", "unknown key"), ("{columns: {acc: 3}}", "columns.acc")]:  # fmt: skip
        (tmp_path / "m.yaml").write_text(f"entries:\n  a:\n    {base}\n    outputs: [x]\n    tolerance: {bad}\n")
        with pytest.raises(ValueError, match=match):
            support.load_manifest(tmp_path / "m.yaml")


def test_dataset_none_is_the_scale_data_set():
    presets = {"ci": {}, "cpu": {}, "full": {"dataset": "cifar10"}}
    for scale, name in (("ci", "digits"), ("cpu", "mnist-test"), ("full", "cifar10")):
        ctx = support.setup("01_sensitivity", presets=presets, **{**STD, "scale": scale}, dataset=None)
        assert ctx.dataset == name
    ctx = support.setup("01_sensitivity", presets=presets, **STD, dataset="moons")  # an explicit one wins
    assert ctx.dataset == "moons"
    with pytest.raises(ValueError, match="full preset must name its data set"):
        support.setup("01_sensitivity", presets=PRESETS, **{**STD, "scale": "full"}, dataset=None)

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from stabkit import support

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"ci": {"n": 1}, "full": {"n": 2}}
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
    base = "chapter: 1\n    notebook: nb\n    title: t\n    runtime: {ci: 1 s, full: 1 s}\n    full_needs_gpu: false"
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
    presets = {"ci": {"threads": target}, "full": {"threads": 0}}
    ctx = support.setup("01_sensitivity", presets=presets, **STD)
    assert torch.get_num_threads() == target and ctx.preset.threads == target
    # 0 (and an absent key) leave the current setting alone
    support.setup("01_sensitivity", presets=presets, **{**STD, "scale": "full"})
    assert torch.get_num_threads() == target
    make_ctx()
    assert torch.get_num_threads() == target


@pytest.mark.parametrize("threads", [-1, 1.5, True, "2"])
def test_setup_rejects_a_bad_threads_preset(threads, _restore_threads):
    presets = {"ci": {"threads": threads}, "full": {}}
    with pytest.raises(ValueError, match="threads must be a non-negative integer"):
        support.setup("01_sensitivity", presets=presets, **STD)
    assert torch.get_num_threads() == _restore_threads


def test_median_time_returns_the_value_and_a_median():
    calls = []
    timing = support.median_time(lambda: calls.append(1) or 42, repeats=3)
    assert timing.value == 42 and len(calls) == 4 and timing.seconds >= 0
    with pytest.raises(ValueError, match="repeats"):
        support.median_time(lambda: None, repeats=0)

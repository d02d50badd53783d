"""The logs path of notebook 06 at `full` (docs/full-scale.md), at ci size: train_net and sample_logs write a
model and a log for a tiny config, and read_logs / load_base_model read them back, or refuse them with an error
that names the command to run."""

import numpy as np
import pytest
import torch

from stabkit import data
from stabkit.certify import certify_from_log, load_log, save_log
from stabkit.certify.smoothing import lvm_certify
from stabkit.sample_logs import load_base_model, log_name, read_logs
from stabkit.sample_logs import main as sample_main
from stabkit.train_net import derived_generator
from stabkit.train_net import main as train_main

SIGMA, N0, N, EVERY, POINTS = 0.5, 10, 60, 45, 5


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    runs, logs = root / "runs", root / "logs"
    train_main(
        ["--out", str(runs / f"cnn-sigma{SIGMA}"), "--dataset", "digits", "--arch", "small-cnn", "--width", "2"]
        + ["--epochs", "1", "--batch-size", "256", "--n-train", "200", "--loss", "ce", "--schedule", "constant"]
        + ["--sigma", str(SIGMA), "--device", "cpu", "--threads", "1", "--no-progress"]
    )
    argv = ["--model", str(runs / f"cnn-sigma{SIGMA}" / "model.pt"), "--sigma", str(SIGMA), "--n0", str(N0)]
    argv += ["--n-samples", str(N), "--every", str(EVERY), "--n-points", str(POINTS), "--lvm", "--device", "cpu"]
    sample_main([*argv, "--out", str(logs / log_name("digits", "cnn", SIGMA)), "--no-progress"])
    labels = data.load("digits", generator=derived_generator(0, "data")).y_test[::EVERY][:POINTS]
    return runs, logs, labels.numpy(), argv


def _read(logs, runs, labels, **change):
    args = dict(dataset="digits", n0=N0, n=N, n_points=POINTS, every=EVERY, labels=labels, checkpoints=runs)
    return read_logs(logs, [("cnn", SIGMA)], **{**args, **change})


def test_log_name_matches_the_documented_shell_loop():
    assert [log_name("cifar10", "sll", s) for s in (0.25, 0.5, 1.0)] == [
        "cifar10-sll-sigma0.25.npz",
        "cifar10-sll-sigma0.5.npz",
        "cifar10-sll-sigma1.0.npz",
    ]
    assert log_name("cifar10", "cnn", 1) == "cifar10-cnn-sigma1.0.npz"


def test_read_logs_returns_the_written_log(written):
    runs, logs, labels, _ = written
    log = _read(logs, runs, labels)[("cnn", SIGMA)]
    raw = load_log(logs / log_name("digits", "cnn", SIGMA))
    assert log.indices.tolist() == list(range(POINTS)) and np.array_equal(log.labels, labels)
    assert np.array_equal(log.counts_estimation, raw.counts_estimation) and log.temperatures is not None
    for a, b in zip(certify_from_log(log), certify_from_log(raw), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(lvm_certify(log).radius, lvm_certify(raw).radius)
    net, config = load_base_model(runs, "cnn", SIGMA, dataset="digits", input_shape=(1, 8, 8))
    assert config["sigma"] == SIGMA and net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_missing_log_names_the_command_that_writes_it(written):
    runs, logs, labels, _ = written
    with pytest.raises(FileNotFoundError, match=r"python -m stabkit\.sample_logs .*--sigma 0\.25 .*--lvm"):
        read_logs(logs, [("cnn", 0.25)], dataset="digits", n0=N0, n=N, n_points=POINTS, every=EVERY)
    with pytest.raises(FileNotFoundError, match="python -m stabkit.train_net"):
        load_base_model(runs, "sll", SIGMA, dataset="digits", input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(n=2 * N), "sampled with"),
        (dict(n0=N0 + 1), "sampled with"),
        (dict(n_points=POINTS + 1), "missing"),
        (dict(labels="shifted"), "other test points"),
    ],
)
def test_mismatched_log_is_refused(written, change, message):
    runs, logs, labels, _ = written
    if change.get("labels") == "shifted":
        change = dict(labels=np.roll(labels, 1) if len(set(labels)) > 1 else labels + 1)
    with pytest.raises(ValueError, match=message) as err:
        _read(logs, runs, **{"labels": labels, **change})
    assert "python -m stabkit.sample_logs" in str(err.value)


def test_log_without_lvm_statistics_or_with_points_missing_is_refused(written, tmp_path):
    runs, logs, labels, argv = written
    plain = [a for a in argv if a != "--lvm"]
    sample_main([*plain, "--out", str(tmp_path / log_name("digits", "cnn", SIGMA)), "--no-progress"])
    with pytest.raises(ValueError, match="without --lvm"):
        _read(tmp_path, runs, labels)
    assert _read(tmp_path, runs, labels, lvm=False)[("cnn", SIGMA)].temperatures is None
    full = load_log(logs / log_name("digits", "cnn", SIGMA))
    save_log(full.subset(np.array([0, 1, 3, 4])), tmp_path / log_name("digits", "cnn", SIGMA))
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        _read(tmp_path, runs, labels)


def test_base_model_of_another_sigma_or_shape_is_refused(written):
    runs, *_ = written
    (runs / "cnn-sigma0.25").mkdir()
    (runs / "cnn-sigma0.25" / "model.pt").write_bytes((runs / f"cnn-sigma{SIGMA}" / "model.pt").read_bytes())
    with pytest.raises(ValueError, match="expected"):
        load_base_model(runs, "cnn", 0.25, dataset="digits", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="expected"):
        load_base_model(runs, "cnn", SIGMA, dataset="digits", input_shape=(1, 7, 7))

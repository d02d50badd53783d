"""The entry points of docs/full-scale.md, run as a user runs them: train in one process, sample logs with a
2-process Gloo job under torchrun, and check that the merged log equals one process's sampling."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stabkit import data, distributed
from stabkit.certify import Smooth, certify_from_log, load_log
from stabkit.sample_logs import main as sample_main
from stabkit.train_net import derived_generator, load_trained

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(*args, nproc=1):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = subprocess.run([*launcher, *args], env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["--out", str(out), "--dataset", "digits", "--arch", "sll", "--size", "tiny", "--pool", "2"]
    args += ["--epochs", "2", "--batch-size", "128", "--n-train", "300", "--device", "cpu", "--threads", "1"]
    _run("-m", "stabkit.train_net", *args, "--no-progress")
    assert (out / "checkpoint.pt").exists() and (out / "history.json").exists()
    return out / "model.pt"


def test_train_net_writes_a_loadable_model(trained):
    net, config = load_trained(trained)
    assert config["arch"] == "sll" and len(config["history"]) == 2 and 0.0 <= config["test_accuracy"] <= 1.0
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ValueError, match="not a model file"):
        load_trained(trained.with_name("checkpoint.pt"))


def test_sharded_sampling_under_torchrun_equals_one_process(trained, tmp_path):
    log_path = tmp_path / "log.npz"
    args = ["--model", str(trained), "--out", str(log_path), "--sigma", "0.5", "--n0", "20", "--n-samples", "300"]
    args += ["--every", "40", "--n-points", "9", "--chunk", "2", "--batch-size", "128", "--device", "cpu"]
    _run("-m", "stabkit.sample_logs", *args, "--threads", "1", "--no-progress", nproc=2)
    merged = load_log(log_path)
    assert merged.indices.tolist() == list(range(9))
    # one process, all points in one call, another batch size
    net, config = load_trained(trained)
    ds = data.load("digits", generator=derived_generator(config["seed"], "data"))
    x, y = ds.x_test[::40][:9], ds.y_test[::40][:9]
    one = Smooth(net, 10, 0.5).sample(
        x, n0=20, n=300, batch_size=1000, labels=y, generator=derived_generator(0, "noise")
    )
    assert np.array_equal(merged.labels, y.numpy())
    assert np.array_equal(merged.counts_selection, one.counts_selection)
    assert np.array_equal(merged.counts_estimation, one.counts_estimation)
    for fa, fb in zip(certify_from_log(merged), certify_from_log(one), strict=True):
        assert torch.equal(fa, fb)


def test_sample_logs_resumes_its_parts_and_refuses_other_settings(trained, tmp_path):
    out = tmp_path / "log.npz"
    argv = ["--model", str(trained), "--out", str(out), "--sigma", "0.5", "--n0", "10", "--n-samples", "50"]
    argv += ["--every", "60", "--n-points", "4", "--chunk", "3", "--device", "cpu", "--no-progress"]
    sample_main(argv)
    first = load_log(out)
    part = next(out.with_name("log.npz.parts").glob("points-000000-*.npz"))
    stamp = part.stat().st_mtime_ns
    out.unlink()
    sample_main(argv)  # the parts are reused, the merged log is the same
    assert part.stat().st_mtime_ns == stamp
    assert np.array_equal(load_log(out).counts_estimation, first.counts_estimation)
    with pytest.raises(ValueError, match="other settings"):
        sample_main([*argv, "--sigma", "0.25"])


def test_shard_splits_evenly():
    parts = [distributed.shard(10, rank=r, size=3) for r in range(3)]
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert distributed.world() == (0, 1) and distributed.is_main()
    with pytest.raises(ValueError):
        distributed.shard(5, rank=3, size=3)

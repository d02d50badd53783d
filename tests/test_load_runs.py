"""Loading the runs that ``python -m stabkit.train_net`` writes (the notebooks' ``-p checkpoints=…`` path):
``stabkit.train_net.load_runs`` and ``run_data`` on tiny digits runs trained by the command line itself."""

import shutil

import pytest
import torch

from stabkit.models import LipschitzNet
from stabkit.train import accuracy
from stabkit.train_net import load_runs, load_trained, run_data, run_folder
from stabkit.train_net import main as train_main

ARCHS, SEEDS = ("sll", "cpl"), (0, 1)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for arch in ARCHS:
        for seed in SEEDS:
            argv = ["--out", str(root / run_folder(arch, seed)), "--dataset", "digits", "--arch", arch]
            argv += ["--size", "tiny", "--pool", "2", "--epochs", "1", "--batch-size", "256", "--seed", str(seed)]
            argv += ["--n-train", "300"]
            train_main([*argv, "--device", "cpu", "--threads", "1", "--no-progress"])
    return root


def test_load_runs_gives_the_written_networks_and_their_data_split(runs_root):
    runs = load_runs(runs_root, ARCHS, SEEDS, dataset="digits")
    assert set(runs) == {(a, s) for a in ARCHS for s in SEEDS}
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for (arch, seed), run in runs.items():
        assert isinstance(run.model, LipschitzNet) and run.model.layer == arch and not run.model.training
        assert run.config["seed"] == seed and run.config["dataset"] == "digits"
        reference, _ = load_trained(runs_root / run_folder(arch, seed) / "model.pt")
        with torch.no_grad():
            assert torch.equal(run.model(x), reference(x))
        # run_data rebuilds the split train_net used: its test accuracy is the one train_net recorded
        split = run_data(run.config)
        assert accuracy(run.model, split.x_test, split.y_test) == pytest.approx(run.config["test_accuracy"], abs=1e-12)
    # the seeds split digits differently: evaluating on the notebook's own split would leak training points
    a, b = (run_data(runs["sll", s].config) for s in SEEDS)
    assert not torch.equal(a.x_test, b.x_test)


def test_missing_runs_name_the_command_that_writes_them(runs_root, tmp_path):
    partial = tmp_path / "runs"
    shutil.copytree(runs_root / run_folder("sll", 0), partial / run_folder("sll", 0))
    with pytest.raises(FileNotFoundError) as err:
        load_runs(partial, ARCHS, [0], dataset="digits")
    message = str(err.value)
    assert "1 of 2" in message and "python -m stabkit.train_net --dataset digits --arch cpl --seed 0 --out" in message
    assert str(partial / "cpl-seed0") in message and "sll-seed0" not in message.split("write them with")[1]
    with pytest.raises(FileNotFoundError, match="2 of 2"):
        load_runs(tmp_path / "nowhere", ARCHS, [0], dataset="digits")


def test_runs_of_another_data_set_arch_or_seed_are_refused(runs_root, tmp_path):
    with pytest.raises(ValueError, match="dataset='mnist-test'"):
        load_runs(runs_root, ["sll"], [0], dataset="mnist-test")
    swapped = tmp_path / "runs"
    shutil.copytree(runs_root / run_folder("cpl", 0), swapped / run_folder("sll", 0))  # a CPL run under SLL's name
    with pytest.raises(ValueError, match="arch='sll'"):
        load_runs(swapped, ["sll"], [0], dataset="digits")
    with pytest.raises(ValueError, match="at least one run"):
        load_runs(runs_root, [], [0], dataset="digits")

import functools
import gzip
import hashlib
import http.server
import pickle
import shutil
import threading

import numpy as np
import pytest
import torch

from stabkit import data


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_digits_shapes_and_range():
    ds = data.load("digits", generator=gen())
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == torch.float32
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert 0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1
    assert ds.num_classes == 10 and ds.y_train.dtype == torch.int64


@pytest.mark.parametrize("name", ["digits", "moons", "circles"])
def test_splits_are_deterministic_and_seed_dependent(name):
    a, b, c = (data.load(name, generator=gen(s)) for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    # train and test are disjoint
    train = {tuple(r) for r in a.x_train.flatten(1).tolist()}
    assert not any(tuple(r) in train for r in a.x_test.flatten(1).tolist())


def test_synthetic_sizes():
    ds = data.load("moons", n_train=300, test_fraction=0.25, generator=gen())
    assert ds.x_train.shape == (300, 2) and len(ds.y_test) == 100 and ds.num_classes == 2


def test_subsets():
    ds = data.load("digits", n_train=100, n_test=50, generator=gen())
    assert len(ds.y_train) == 100 and len(ds.y_test) == 50


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(name="imagenet"), "unknown dataset"),
        (dict(name="digits", n_train=0), "n_train"),
        (dict(name="digits", test_fraction=1.5), "test_fraction"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kw)


def test_missing_files_offline_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)not found in .*mnist.*download=True"):
        data.load("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"(?s)CIFAR-10 batches not found.*download=True"):
        data.load("cifar10", root=tmp_path)


def write_idx(path, array, compress=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_read_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), arr)
    write_idx(tmp_path / "b", arr, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b"), arr)
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x00\x00\x0d\x01abcd")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(tmp_path / "d")


def write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": list(rng.integers(0, 10, n)),
    }
    path.write_bytes(pickle.dumps(batch))
    return batch


def test_cifar_reader_on_files_in_the_official_format(tmp_path):
    folder = tmp_path / "cifar10" / data.CIFAR10_DIR
    folder.mkdir(parents=True)
    batches = [write_cifar_batch(folder / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    test = write_cifar_batch(folder / "test_batch", 3, 9)
    ds = data.load("cifar10", root=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    # channel-major layout: the first 1024 bytes are the red plane
    expected = batches[0][b"data"][0, :1024].reshape(32, 32) / 255.0
    np.testing.assert_allclose(ds.x_train[0, 0].numpy(), expected, rtol=1e-6)
    assert ds.y_test.tolist() == [int(v) for v in test[b"labels"]]
    (folder / "test_batch").write_bytes(pickle.dumps({b"oops": 1}))
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        data.read_cifar10(tmp_path, split="test")


@pytest.fixture
def http_server(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/'srv'."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_through_pooch_verifies_hashes(shared_data, http_server, tmp_path):
    srv, url = http_server
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / name, srv / name)
    x, y = data.read_mnist(tmp_path / "root", split="test", download=True, base_url=url)
    assert x.shape == (10000, 1, 28, 28) and y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the payload really is the published one
    payload = gzip.decompress((tmp_path / "root" / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.sha256(payload).hexdigest() == data.MNIST_FILES["t10k-labels-idx1-ubyte.gz"][1]


def test_download_rejects_and_deletes_a_corrupted_file(shared_data, http_server, tmp_path):
    srv, url = http_server
    raw = bytearray(gzip.decompress((shared_data / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] ^= 0xFF  # one flipped label byte: still a valid gzip and IDX file
    (srv / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    folder = tmp_path / "root" / "mnist"
    with pytest.raises(ValueError, match="failed its hash check"):
        data.fetch_mnist_file("t10k-labels-idx1-ubyte.gz", folder, download=True, base_url=url)
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists()


def test_download_offline_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not download"):
        data.fetch_mnist_file("t10k-labels-idx1-ubyte.gz", tmp_path, download=True, base_url="http://127.0.0.1:9/")


def test_mnist_test_split_from_shared_files(shared_data, tmp_path):
    (tmp_path / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / name, tmp_path / "mnist" / name)
    ds = data.load("mnist-test", root=tmp_path, n_train=500, n_test=100, generator=gen())
    assert ds.x_train.shape == (500, 1, 28, 28) and len(ds.y_test) == 100
    again = data.load("mnist-test", root=tmp_path, n_train=500, n_test=100, generator=gen())
    assert torch.equal(ds.x_train, again.x_train)


# ------------------------------------------------------------------------------------------ label noise
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 1.0])
def test_label_noise_flips_the_expected_fraction_to_other_classes(rate):
    n, k = 200_000, 10
    y = torch.randint(0, k, (n,), generator=gen(1))
    noisy = data.symmetric_label_noise(y, rate, k, generator=gen(2))
    changed = noisy != y
    # a flipped label never keeps its class, so the changed fraction is Binomial(n, rate) / n
    sd = (rate * (1 - rate) / n) ** 0.5
    assert abs(float(changed.float().mean()) - rate) <= 5 * sd + 1e-12
    assert noisy.dtype == y.dtype and noisy.shape == y.shape
    assert int(noisy.min()) >= 0 and int(noisy.max()) < k


def test_label_noise_replacement_is_uniform_over_the_other_classes():
    from scipy import stats

    n, k = 90_000, 4
    y = torch.zeros(n, dtype=torch.int64)
    noisy = data.symmetric_label_noise(y, 0.5, k, generator=gen(3))
    counts = torch.bincount(noisy[noisy != 0], minlength=k)[1:].numpy()
    assert stats.chisquare(counts).pvalue > 1e-3  # classes 1..3 equally likely


def test_label_noise_is_deterministic_and_seed_dependent():
    y = torch.randint(0, 10, (500,), generator=gen(0))
    a = data.symmetric_label_noise(y, 0.3, 10, generator=gen(7))
    assert torch.equal(a, data.symmetric_label_noise(y, 0.3, 10, generator=gen(7)))
    assert not torch.equal(a, data.symmetric_label_noise(y, 0.3, 10, generator=gen(8)))
    assert torch.equal(data.symmetric_label_noise(y, 0.3, 10), data.symmetric_label_noise(y, 0.3, 10))
    y0 = y.clone()
    data.symmetric_label_noise(y, 0.3, 10, generator=gen(7))
    assert torch.equal(y, y0)  # the input is left alone


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(4, dtype=torch.int64), -0.1, 3), "rate"),
        ((torch.zeros(4, dtype=torch.int64), 1.5, 3), "rate"),
        ((torch.zeros(4, dtype=torch.int64), float("nan"), 3), "rate"),
        ((torch.zeros(4, dtype=torch.int64), 0.1, 1), "num_classes"),
        ((torch.tensor([0, 3]), 0.1, 3), r"labels must lie in \[0, 3\)"),
        ((torch.tensor([-1, 0]), 0.1, 3), "labels"),
        ((torch.zeros(4), 0.1, 3), "integer labels"),
        ((torch.zeros(2, 2, dtype=torch.int64), 0.1, 3), "dimensions"),
    ],
)
def test_label_noise_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        data.symmetric_label_noise(*args, generator=gen())


def _copy_test_files(shared_data, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / name, folder / name)


def test_a_damaged_deflate_stream_is_a_hash_error_and_deleted(shared_data, tmp_path):
    _copy_test_files(shared_data, tmp_path / "mnist")
    p = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    b = bytearray(p.read_bytes())
    b[100] ^= 0xFF  # inside the deflate stream: gzip.decompress raises zlib.error
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="could not be decompressed.*deleted"):
        data.load("mnist-test", root=tmp_path)
    assert not p.exists()


def test_uncompressed_and_recompressed_copies_with_the_published_payload_are_kept(shared_data, tmp_path):
    _copy_test_files(shared_data, tmp_path / "mnist")
    reference = data.load("mnist-test", root=tmp_path, generator=gen())
    images = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    images.write_bytes(gzip.decompress(images.read_bytes()))  # uncompressed IDX under the .gz name
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes()), compresslevel=1, mtime=1))
    again = data.load("mnist-test", root=tmp_path, generator=gen())
    assert images.exists() and labels.exists()
    assert torch.equal(reference.x_train, again.x_train) and torch.equal(reference.y_test, again.y_test)


def test_a_wellformed_train_file_that_cannot_be_verified_is_kept(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = np.arange(60000, dtype=np.uint8) % 10
    payload = b"\x00\x00\x08\x01" + np.array([60000], dtype=">u4").tobytes() + labels.tobytes()
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(payload, mtime=0))  # a "re-compressed mirror": MD5 differs, no payload hash
    with pytest.raises(ValueError, match="cannot be verified; it was kept"):
        data.fetch_mnist_file(path.name, folder)
    assert path.exists()
    path.write_bytes(gzip.compress(payload[:-5], mtime=0))  # truncated: certainly corrupt
    with pytest.raises(ValueError, match="failed its hash check"):
        data.fetch_mnist_file(path.name, folder)
    assert not path.exists()


def test_fetch_cli_downloads_verifies_and_reports(shared_data, http_server, tmp_path, monkeypatch, capsys):
    srv, url = http_server
    _copy_test_files(shared_data, srv)
    monkeypatch.setenv("STABKIT_MNIST_URL", url)
    root = tmp_path / "root"
    assert data.main(["fetch", "mnist-test", "--root", str(root), "--quiet"]) == 0
    assert "mnist-test: verified" in capsys.readouterr().out
    assert data.missing_files("mnist-test", root) == [] and len(data.missing_files("mnist", root)) == 2
    assert data.main(["fetch", "mnist-test", "--root", str(root)]) == 0  # present: verified, not re-downloaded
    monkeypatch.setenv("STABKIT_MNIST_URL", "http://127.0.0.1:9/")
    assert data.main(["fetch", "mnist", "--root", str(root), "--quiet"]) == 1
    assert "could not download" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data.main(["fetch", "imagenet"])

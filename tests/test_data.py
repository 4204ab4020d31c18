import gzip
import shutil
import struct

import numpy as np
import pytest
import torch

from creditlab import data
from creditlab.data.idx import parse_idx, read_idx
from creditlab.errors import CreditlabError


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_roundtrip_raw_and_gzip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    (tmp_path / "raw").write_bytes(idx_bytes(images))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "raw", 3, 5, (28, 28)), images)
    assert np.array_equal(read_idx(tmp_path / "packed.gz", 3, 5, (28, 28)), images)


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "magic number"),
    (lambda b: b[:-100], "truncated"),
    (lambda b: b[:4] + struct.pack(">I", 6) + b[8:], "has 6 items"),
    (lambda b: b[:8] + struct.pack(">I", 27) + b[12:], "shape"),
    (lambda b: b[:10], "too short"),
])
def test_idx_rejects_corruption(tmp_path, mangle, message):
    good = idx_bytes(np.zeros((5, 28, 28)))
    path = tmp_path / "bad"
    path.write_bytes(mangle(good))
    with pytest.raises(CreditlabError, match=message) as info:
        read_idx(path, 3, 5, (28, 28))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28))))[:-20])
    with pytest.raises(CreditlabError, match="corrupt or truncated gzip"):
        read_idx(path, 3)


def test_idx_checksum_mismatch(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(idx_bytes(np.zeros((2, 2))))
    with pytest.raises(CreditlabError, match="checksum"):
        read_idx(path, 2, sha256="0" * 64)


def test_digits_splits_are_fixed_and_disjoint():
    d = data.load_digits()
    assert d.input_shape == (1, 8, 8)
    assert (len(d.train), len(d.val), len(d.test)) == (1257, 180, 360)
    assert abs(float(d.train.x.mean())) < 0.02  # standardised with the pre-split training pixels
    again = data.load_digits()
    assert torch.equal(d.val.x, again.val.x)
    rows = {tuple(r) for r in d.test.x.flatten(1).tolist()}
    overlap = sum(tuple(r) in rows for r in d.train.x.flatten(1).tolist())
    # A few digits images are exact duplicates of each other, nothing more.
    assert overlap < 5


def test_batches_cover_split_once():
    split = data.Split(torch.arange(10.0)[:, None], torch.arange(10))
    seen = torch.cat([y for _, y in split.batches(3, torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(10))


def test_mnist_reads_real_files(mnist_dir):
    d = data.load_mnist_like("mnist", data_dir=mnist_dir, download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.input_shape == (1, 28, 28)
    assert torch.bincount(d.test.y).tolist()[:3] == [980, 1135, 1032]


def test_mnist_found_through_environment(mnist_dir, monkeypatch):
    monkeypatch.setenv("CREDITLAB_DATA", str(mnist_dir.parent))
    d = data.load_mnist_like("mnist", download=False)
    assert len(d.test) == 10000


def flip_byte(raw: bytes) -> bytes:
    """Change one pixel: the file stays well formed, so only the checksum can catch it."""
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1:]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x07" + gzip.decompress(p.read_bytes())[4:])), "magic"),
    (lambda p: p.write_bytes(gzip.compress(flip_byte(gzip.decompress(p.read_bytes())))), "checksum"),
])
def test_mnist_rejects_corrupt_copy(mnist_dir, tmp_path, damage, message):
    for f in mnist_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    damage(target)
    with pytest.raises(CreditlabError, match=message) as info:
        data.load_mnist_like("mnist", data_dir=tmp_path, download=False)
    assert "t10k-images" in str(info.value)


def test_missing_dataset_names_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDITLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(CreditlabError, match="not found: put train-images-idx3-ubyte") as info:
        data.load_mnist_like("mnist", data_dir=tmp_path, download=False)
    assert str(tmp_path) in str(info.value)


def test_parse_idx_accepts_labels():
    labels = np.arange(10)
    assert np.array_equal(parse_idx(idx_bytes(labels), "x", 1, 10, ()), labels)

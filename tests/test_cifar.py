"""The CIFAR-10 reader: official layout, plain-data unpickling, checks and augmentation."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from creditlab import data
from creditlab.data import cifar
from creditlab.errors import CreditlabError


def batch_bytes(images: np.ndarray, labels: list[int], protocol: int = 2) -> bytes:
    return pickle.dumps({b"batch_label": b"test", b"labels": labels, b"data": images.reshape(len(images), -1),
                         b"filenames": [b"x.png"] * len(labels)}, protocol=protocol)


def write_archive(path, batches: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in batches.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def small_batches(rng, n=6, protocol=2):
    out, raw = {}, {}
    for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        out[name] = batch_bytes(images, labels, protocol)
        raw[name] = (images, labels)
    return out, raw


@pytest.mark.parametrize("protocol", [2, 4])
def test_reads_archive_written_by_test(tmp_path, protocol):
    rng = np.random.default_rng(0)
    batches, raw = small_batches(rng, protocol=protocol)
    write_archive(tmp_path / cifar.ARCHIVE, batches)
    dataset = cifar.load_cifar10(tmp_path, val_size=0)
    train_images = np.concatenate([raw[n][0] for n in cifar.TRAIN_BATCHES]).astype(np.float32) / 255
    mean = train_images.mean(axis=(0, 2, 3), keepdims=True)
    std = train_images.std(axis=(0, 2, 3), keepdims=True)
    torch.testing.assert_close(dataset.train.x, torch.from_numpy((train_images - mean) / std))
    assert dataset.train.y.tolist() == [v for n in cifar.TRAIN_BATCHES for v in raw[n][1]]
    test_images = raw[cifar.TEST_BATCH][0].astype(np.float32) / 255
    torch.testing.assert_close(dataset.test.x, torch.from_numpy((test_images - mean) / std))
    assert dataset.test.y.tolist() == raw[cifar.TEST_BATCH][1]
    assert dataset.input_shape == (3, 32, 32)


def test_reads_extracted_folder(tmp_path):
    batches, raw = small_batches(np.random.default_rng(1))
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    for name, payload in batches.items():
        (folder / name).write_bytes(payload)
    dataset = cifar.load_cifar10(tmp_path, val_size=3)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (27, 3, 6)


class CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os')",))


@pytest.mark.parametrize("payload", ["system", "eval", "numpy-load"])
def test_rejects_pickle_that_calls_a_function(tmp_path, payload):
    marker = tmp_path / "marker"
    batches, _ = small_batches(np.random.default_rng(2))
    if payload == "system":
        evil = pickle.dumps({b"data": CallsSystem(marker), b"labels": []}, protocol=2)
    elif payload == "eval":
        evil = pickle.dumps({b"data": CallsEval(), b"labels": []}, protocol=2)
    else:
        evil = b"cnumpy\nload\n(S'/etc/passwd'\ntR."  # a global numpy function other than the array builders
    batches["data_batch_3"] = evil
    write_archive(tmp_path / cifar.ARCHIVE, batches)
    with pytest.raises(CreditlabError, match="data_batch_3 is not a plain-data CIFAR-10 pickle") as info:
        cifar.load_cifar10(tmp_path)
    assert "is not allowed" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_rejects_array_builder_misuse():
    # _reconstruct may only build an ndarray; anything else is refused.
    with pytest.raises(CreditlabError, match="_reconstruct may only rebuild"):
        cifar.load_pickle(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\n(S'u1'\ntR(I0\ntS'b'\ntR.", "x")


@pytest.mark.parametrize("mangle, message", [
    (lambda d: {b"data": d[b"data"][:, :100], b"labels": d[b"labels"]}, "expected N x 3072"),
    (lambda d: {b"data": d[b"data"], b"labels": d[b"labels"][:-1]}, "labels for"),
    (lambda d: {b"data": d[b"data"], b"labels": [12] * len(d[b"labels"])}, "contains label 12"),
    (lambda d: {b"labels": d[b"labels"]}, "no 'data' entry"),
    (lambda d: [1, 2, 3], "contains a list"),
])
def test_rejects_malformed_batches(tmp_path, mangle, message):
    batches, _ = small_batches(np.random.default_rng(3))
    good = pickle.loads(batches[cifar.TEST_BATCH])
    batches[cifar.TEST_BATCH] = pickle.dumps(mangle(good), protocol=2)
    write_archive(tmp_path / cifar.ARCHIVE, batches)
    with pytest.raises(CreditlabError, match=message):
        cifar.load_cifar10(tmp_path)


def test_missing_archive_names_places_and_url(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDITLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data.sources, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(CreditlabError, match="cifar-10-python.tar.gz") as info:
        cifar.load_cifar10(tmp_path / "nowhere")
    assert cifar.URL in str(info.value)


def test_truncated_archive_is_one_line_error(tmp_path):
    batches, _ = small_batches(np.random.default_rng(4))
    write_archive(tmp_path / cifar.ARCHIVE, batches)
    path = tmp_path / cifar.ARCHIVE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CreditlabError, match="not a readable tar.gz archive"):
        cifar.load_cifar10(tmp_path)


def test_crop_flip_shifts_or_mirrors():
    x = torch.randn(40, 3, 8, 8)
    out = cifar.random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flipped = 0
    for n in range(len(x)):
        candidates = {}
        for dy in range(5):
            for dx in range(5):
                crop = padded[n, :, dy:dy + 8, dx:dx + 8]
                candidates[(dy, dx, False)] = crop
                candidates[(dy, dx, True)] = crop.flip(2)
        matches = [k for k, c in candidates.items() if torch.equal(c, out[n])]
        assert matches, n
        flipped += matches[0][2]
    assert 5 < flipped < 35  # about half are mirrored
    again = cifar.random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)


def test_reads_the_real_cifar10(cifar_dir):
    dataset = data.load("cifar10", data_dir=cifar_dir)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (45000, 5000, 10000)
    assert torch.bincount(dataset.test.y).tolist() == [1000] * 10
    assert dataset.augment is cifar.random_crop_flip
    channel_means = dataset.train.x.mean((0, 2, 3))
    assert channel_means.abs().max() < 0.01

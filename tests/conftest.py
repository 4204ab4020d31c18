import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def _data_root() -> Path | None:
    """The folder holding mnist/ and the other real datasets, from $CREDITLAB_DATA."""
    root = os.environ.get("CREDITLAB_DATA")
    return Path(root) if root else None


@pytest.fixture
def mnist_dir() -> Path:
    root = _data_root()
    if root is None or not (root / "mnist").is_dir():
        pytest.skip("set CREDITLAB_DATA to a folder holding mnist/ with the four IDX files")
    return root / "mnist"


@pytest.fixture
def cifar_dir() -> Path:
    root = _data_root()
    if root is None or not (root / "cifar10").is_dir():
        pytest.skip("set CREDITLAB_DATA to a folder holding cifar10/ with cifar-10-python.tar.gz")
    return root / "cifar10"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one thread: its tensors are small, and extra threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""CIFAR-10 from the official "python version" archive, read without running code from its pickles.

The archive `cifar-10-python.tar.gz` (or its extracted folder
`cifar-10-batches-py/`) contains six pickled dicts, `data_batch_1` to `_5` and
`test_batch`, each with `data` (10,000 x 3072 uint8, the red, green and blue
32x32 planes of each image in turn) and `labels` (10,000 ints in 0-9).

`pickle.load` would call any function a file names, so these files go through
`SafeUnpickler`: it resolves no global at all except the few names numpy uses
to pickle an array, and those resolve to stand-ins that only record the
array's shape, dtype and raw bytes; the array is then built from the bytes by
`numpy.frombuffer`. A file that names any other global, such as `os.system`,
raises CreditlabError before anything in it runs.
"""

import io
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CreditlabError
from .sources import candidate_dirs

log = logging.getLogger(__name__)

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
IMAGE_SHAPE = (3, 32, 32)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Element types an array in these files may have (numpy type codes).
_DTYPES = {"u1": np.uint8, "i1": np.int8, "i2": np.int16, "i4": np.int32, "i8": np.int64}


class _ArrayClass:
    """Stand-in for numpy.ndarray: only passed as the class argument of _reconstruct."""


class _Dtype:
    """Stand-in for numpy.dtype(code): records the type code; BUILD may set its byte order."""

    def __init__(self, code, align=False, copy=False):
        code = code.decode("ascii") if isinstance(code, bytes) else code
        if code not in _DTYPES:
            raise pickle.UnpicklingError(f"array element type {code!r} is not allowed")
        self.code = code
        self.byteorder = "|"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("malformed dtype state")
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in ("|", "<", ">", "="):
            raise pickle.UnpicklingError(f"invalid byte order {order!r}")
        self.byteorder = order

    def numpy(self) -> np.dtype:
        dtype = np.dtype(_DTYPES[self.code])
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _array_from_bytes(raw, dtype, shape, fortran: bool = False) -> np.ndarray:
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError("array without a plain element type")
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"invalid array shape {shape!r}")
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data is not a byte string")
    dtype = dtype.numpy()
    count = int(np.prod(shape))
    if len(raw) != count * dtype.itemsize:
        raise pickle.UnpicklingError(f"array of shape {shape} needs {count * dtype.itemsize} bytes, found {len(raw)}")
    array = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(array, dtype=dtype.newbyteorder("="), order="C")  # a writable copy in native byte order


class _PendingArray:
    """Result of _reconstruct: becomes an array when BUILD hands it (version, shape, dtype, fortran, bytes)."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("malformed array state")
        _version, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, bool(fortran))


def _reconstruct(cls, shape, typecode):
    if cls is not _ArrayClass:
        raise pickle.UnpicklingError("_reconstruct may only rebuild a numpy array")
    return _PendingArray()


def _frombuffer(raw, dtype, shape, order="C"):
    return _array_from_bytes(raw, dtype, tuple(shape), order == "F")


def _latin1_bytes(text, encoding):
    """Stand-in for _codecs.encode, which Python 3 protocol-2 pickles use to write bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only latin1 text may be turned into bytes")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy", "ndarray"): _ArrayClass,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for plain data: containers, strings, bytes, numbers and numpy arrays rebuilt from bytes."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent references are not allowed in a data file")


def _resolve(value):
    """Replace every pending array in the unpickled structure by its numpy array."""
    if isinstance(value, _PendingArray):
        if value.array is None:
            raise pickle.UnpicklingError("array without data")
        return value.array
    if isinstance(value, dict):
        return {_resolve(k): _resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, (_Dtype, _ArrayClass)) or value is _ArrayClass:
        raise pickle.UnpicklingError("stray numpy type object")
    return value


def load_pickle(payload: bytes, where: str):
    """Unpickle plain data from `payload`; raise CreditlabError naming `where` for anything else."""
    try:
        value = SafeUnpickler(io.BytesIO(payload), encoding="bytes").load()
        return _resolve(value)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError) as exc:
        raise CreditlabError(f"{where} is not a plain-data CIFAR-10 pickle ({exc}); "
                             f"replace it with the official file from {URL}") from None


def find_source(data_dir: str | Path | None = None) -> Path:
    """Return the CIFAR-10 archive or extracted folder from the first searched folder that has one."""
    searched = candidate_dirs("cifar10", data_dir)
    for folder in searched:
        for candidate in (folder / FOLDER, folder / ARCHIVE):
            if candidate.exists():
                return candidate
    where = ", ".join(str(p) for p in searched)
    raise CreditlabError(f"dataset 'cifar10' not found: put {ARCHIVE} (from {URL}) or its extracted {FOLDER}/ "
                         f"in one of [{where}], or pass --data-dir DIR")


def read_files(source: Path) -> dict[str, bytes]:
    """Return the raw bytes of the six batch files from the archive or the extracted folder."""
    names = (*TRAIN_BATCHES, TEST_BATCH)
    if source.is_dir():
        out = {}
        for name in names:
            path = source / name
            try:
                out[name] = path.read_bytes()
            except OSError as exc:
                raise CreditlabError(f"cannot read {path}: {exc.strerror}; put the six CIFAR-10 batch files "
                                     f"in {source}") from None
        return out
    try:
        # One streaming pass: a gzip archive cannot seek back without decompressing it again.
        out = {}
        with tarfile.open(source, "r|gz") as archive:
            for member in archive:
                folder, _, name = member.name.partition("/")
                if member.isfile() and folder == FOLDER and name in names:
                    out[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CreditlabError(f"{source} is not a readable tar.gz archive ({exc}); replace it with the "
                             f"official archive from {URL}") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise CreditlabError(f"{source} lacks {FOLDER}/{missing[0]}; replace it with the official archive from {URL}")
    return out


def _field(batch: dict, key: str, where: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise CreditlabError(f"{where} has no {key!r} entry; replace it with the official file from {URL}")


def parse_batch(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Return images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, checking both."""
    batch = load_pickle(payload, where)
    if not isinstance(batch, dict):
        raise CreditlabError(f"{where} contains a {type(batch).__name__}, expected a dict; replace it with the "
                             f"official file from {URL}")
    data = _field(batch, "data", where)
    labels = np.asarray(_field(batch, "labels", where))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise CreditlabError(f"{where} has data of shape {shape}, expected N x 3072 unsigned bytes; replace it "
                             f"with the official file from {URL}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise CreditlabError(f"{where} has {labels.size} labels for {len(data)} images; replace it with the "
                             f"official file from {URL}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CreditlabError(f"{where} contains label {labels.max() if labels.max() > 9 else labels.min()}, "
                             f"expected 0-9; replace it with the official file from {URL}")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Translate each image by up to `padding` pixels (zero-padded) and mirror it left-right with probability 1/2.

    Zero is the channel mean after standardisation. Random numbers come from
    `generator` (on the CPU), so a run's augmentation repeats with its seed.
    """
    n, _, height, width = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height, device=x.device)
    cols = offsets[:, 1:] + torch.arange(width, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around the channel slice put the indexed dims first: (N, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def load_cifar10(data_dir: str | Path | None = None, val_size: int | None = None):
    """CIFAR-10: 50,000 training images (5,000 held out for validation) and 10,000 test images, 3x32x32.

    Pixels are scaled to [0, 1] and standardised per channel with the mean and
    standard deviation of the 50,000 training images. Training batches get
    `random_crop_flip` through the Dataset's augment hook.
    """
    from . import Dataset, Split, _hold_out

    source = find_source(data_dir)
    log.info("reading CIFAR-10 from %s", source)
    files = read_files(source)
    parts = [parse_batch(files[name], f"{source}:{name}") for name in TRAIN_BATCHES]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = parse_batch(files[TEST_BATCH], f"{source}:{TEST_BATCH}")
    train_x = torch.from_numpy(train_images).float().div_(255.0)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    train_x.sub_(mean).div_(std)
    test_x = torch.from_numpy(test_images).float().div_(255.0).sub_(mean).div_(std)
    train, val = _hold_out(train_x, torch.from_numpy(train_labels), 5000 if val_size is None else val_size)
    test = Split(test_x, torch.from_numpy(test_labels))
    meta = {"source": str(source), "mean": mean.flatten().tolist(), "std": std.flatten().tolist(),
            "classes": list(CLASSES)}
    return Dataset("cifar10", train, val, test, 10, meta, augment=random_crop_flip)

"""Reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw."""

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from ..errors import CreditlabError

# The third byte of the magic number gives the element type; 0x08 is unsigned byte.
_UBYTE = 0x08


def read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it if it starts with the gzip magic bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CreditlabError(f"cannot read {path}: {exc.strerror}; check the path and permissions") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CreditlabError(
                f"{path} is a corrupt or truncated gzip file ({exc}); delete it and download it again"
            ) from None
    return data


def parse_idx(data: bytes, path: Path, ndim: int, count: int | None = None,
              item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking the magic number, count and shape."""
    fix = "delete it and download it again, or replace it with the official file"
    if len(data) < 4 + 4 * ndim:
        raise CreditlabError(f"{path} is too short for an IDX header ({len(data)} bytes); {fix}")
    magic = int.from_bytes(data[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise CreditlabError(
            f"{path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"for a {ndim}-dimensional IDX file of unsigned bytes; {fix}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if count is not None and dims[0] != count:
        raise CreditlabError(f"{path} has {dims[0]} items, expected {count}; {fix}")
    if item_shape is not None and dims[1:] != item_shape:
        raise CreditlabError(f"{path} has items of shape {dims[1:]}, expected {item_shape}; {fix}")
    body = data[4 + 4 * ndim:]
    size = int(np.prod(dims))
    if len(body) != size:
        raise CreditlabError(
            f"{path} has {len(body)} data bytes, expected {size} for shape {dims} (truncated or padded); {fix}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def check_sha256(data: bytes, path: Path, sha256: str) -> None:
    """Raise if the uncompressed bytes of `path` do not have the expected sha256 digest."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CreditlabError(
            f"{path} fails its checksum (sha256 of the uncompressed bytes is {digest[:16]}..., "
            f"expected {sha256[:16]}...); the file is corrupt or not the official release: "
            f"delete it and download it again")


def read_idx(path: Path, ndim: int, count: int | None = None,
             item_shape: tuple[int, ...] | None = None, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file; with `sha256`, the uncompressed bytes must have that digest."""
    data = read_bytes(path)
    array = parse_idx(data, path, ndim, count, item_shape)
    if sha256 is not None:
        check_sha256(data, path, sha256)
    return array

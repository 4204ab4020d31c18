"""Search order for dataset files, and a checksum-verified download when none are found."""

import gzip
import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import CreditlabError
from ..io import _write_atomic

log = logging.getLogger(__name__)

SYSTEM_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name on disk and the sha256 of its uncompressed bytes."""
    name: str
    sha256: str


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "creditlab"


def candidate_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    """List the folders searched for dataset `name`, in order of preference."""
    roots: list[Path] = []
    if data_dir:
        roots += [Path(data_dir), Path(data_dir) / name]
    if os.environ.get("CREDITLAB_DATA"):
        root = Path(os.environ["CREDITLAB_DATA"])
        roots += [root, root / name]
    roots += [cache_dir() / name, SYSTEM_DIR / name]
    return roots


def find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, files: list[RemoteFile], data_dir: str | Path | None,
           mirrors: list[str], download: bool = True) -> dict[str, Path]:
    """Return the path of each file, from the first folder that has all of them, downloading if none does."""
    searched = candidate_dirs(name, data_dir)
    for folder in searched:
        found = {f.name: find_file(folder, f.name) for f in files}
        if all(found.values()):
            log.debug("using %s from %s", name, folder)
            return found  # type: ignore[return-value]
    if download and mirrors:
        target = cache_dir() / name
        try:
            return fetch(files, mirrors, target)
        except CreditlabError as exc:
            log.warning("%s", exc)
    expected = ", ".join(f.name + "[.gz]" for f in files)
    where = ", ".join(str(p) for p in searched)
    raise CreditlabError(
        f"dataset {name!r} not found: put {expected} in one of [{where}], or pass --data-dir DIR")


def fetch(files: list[RemoteFile], mirrors: list[str], target: Path) -> dict[str, Path]:
    """Download the gzip-compressed files, checking each one's sha256 before it is kept."""
    paths = {}
    for f in files:
        path = target / f"{f.name}.gz"
        if path.is_file():
            paths[f.name] = path
            continue
        errors = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{f.name}.gz"
            log.info("downloading %s", url)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    payload = response.read()
                raw = gzip.decompress(payload)
            except (urllib.error.URLError, OSError, EOFError, ValueError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            digest = hashlib.sha256(raw).hexdigest()
            if digest != f.sha256:
                errors.append(f"{url}: checksum mismatch (sha256 {digest[:16]}..., expected {f.sha256[:16]}...)")
                continue
            _write_atomic(path, lambda out: out.write(payload), "wb")
            paths[f.name] = path
            break
        else:
            raise CreditlabError(f"download of {f.name} failed: {'; '.join(errors)}")
    return paths

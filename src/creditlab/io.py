"""Atomic file writes: every file goes to a temporary name in the same folder, then is renamed."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

# mkstemp creates files readable by the owner only; results should get the
# permissions any other new file would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(handle, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text), "w")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def save_torch(path: Path, obj: Any) -> None:
    _write_atomic(path, lambda f: torch.save(obj, f), "wb")


def save_figure(path: Path, figure) -> None:
    # bbox_inches="tight" keeps a legend placed outside the axes inside the image.
    _write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=120, bbox_inches="tight"), "wb")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

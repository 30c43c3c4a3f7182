"""Atomic files for training runs: checkpoints (torch.save) and JSON, written to a temporary file in
the same directory, flushed to disk, then moved over the target with os.replace. A crash at any
moment leaves either the previous file or the new one, never a truncated one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
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


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` (plus a format version) to ``path`` atomically."""
    payload = dict(state, format=FORMAT_VERSION)
    _atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (``weights_only``: no arbitrary pickles).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint of this format (corrupt or foreign).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt zips / pickles
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a scorefpe checkpoint (format {FORMAT_VERSION})")
    return state

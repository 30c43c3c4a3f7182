"""Atomic files for training runs: checkpoints (torch.save) and JSON, written through
:func:`scorefpe._util.atomic_output` (temporary file in the same directory, flushed to disk, then
os.replace). A crash at any moment leaves either the previous file or the new one, never a
truncated one. ``atomic_write_text`` is re-exported from ``scorefpe._util``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from scorefpe._util import atomic_output, atomic_write_text, remove_stale_temporaries

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "METRICS_NAME", "FORMAT_VERSION", "atomic_write_json",
           "atomic_write_text", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FORMAT_VERSION = 1


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (see
    :func:`scorefpe._util.atomic_output`: same mode as any other result file)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` (plus a format version) to ``path`` atomically, flushed to disk
    before the rename; the file gets mode 0666 & ~umask like every other output."""
    payload = dict(state, format=FORMAT_VERSION)
    # A temporary file of a save killed mid-write (kill -9, power loss) is never renamed; the
    # one writer of this checkpoint removes it here so run directories do not collect them.
    remove_stale_temporaries(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())


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

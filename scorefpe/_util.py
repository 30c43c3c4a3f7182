"""Small shared helpers: parsing closed choices, writing files atomically, naming the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(enum_cls: type[E], value: E | str, what: str) -> E:
    """The member of ``enum_cls`` named by ``value``; ValueError naming it and the valid choices."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in enum_cls)  # type: ignore[attr-defined]
        raise ValueError(f"unknown {what} {value!r}; choose one of {valid}") from None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that `atomic_output` leaves beside ``path`` when its process
    is killed mid-write (".<stem>.<random><suffix>"); returns what was removed. Call it only
    where one process writes ``path`` (a run directory's checkpoint), never for shared files."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(f".{path.stem}.*{path.suffix or '.tmp'}"):
        if tmp.is_file() and tmp.name != path.name:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any error the temporary file is removed, so nothing half-written is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; results are for every user who can read the folder.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` atomically, flushed to disk before the rename."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` atomically (temporary file, then os.replace)."""
    atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed content of the JSON file at ``path``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not valid UTF-8 JSON; the message names the file, so a corrupt
            eval.json or config.json among many is found at once.
    """
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid {what} ({err}); delete or restore it") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (metrics.jsonl) as dicts. A last line cut by a crash is
    skipped (an append interrupted mid-line); any other line that is not a JSON object is
    corruption: ValueError naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a valid JSON-lines file ({err}); delete or restore it") from None
    out = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            rec = None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {i + 1}: not a JSON object ({line[:40]!r}); delete or "
                             "restore the file")
        out.append(rec)
    return out


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG at ``path`` atomically and close it (also on error), so a
    failed or interrupted plot leaves neither a half-written file nor an open figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def cpu_name() -> str:
    """The CPU model name, as `lscpu` prints it under "Model name" (e.g. "Intel(R) Xeon(R)
    Processor"): read from /proc/cpuinfo, else from lscpu (CPUs whose cpuinfo has no model
    name), else platform.processor() / platform.machine(), else "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: Any = "cpu") -> str:
    """"<CPU model or GPU name>; torch <version>; <n> thread(s)" for the results files.

    ``device``: a torch.device or its spelling; a CUDA device is named by
    torch.cuda.get_device_name, anything else by `cpu_name`.
    """
    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return f"{name}; torch {torch.__version__}; {torch.get_num_threads()} thread(s)"


def run_labels(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """The labels of several run directories (their resolved names, e.g. ``none-s0``), which
    must be distinct (curves labelled alike could not be told apart).

    Raises:
        ValueError: two directories share a name, naming them.
    """
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"run directories must have distinct names (labels), got {names}")
    return names

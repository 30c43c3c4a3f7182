"""Evaluate a trained MNIST run directory: samples, LeNet FID, density/coverage, entropy, NLL.

A run directory is what `scorefpe train mnist` writes (config.json, checkpoint.pt,
metrics.jsonl). This module turns it into

- ``samples.npy`` (N, 1, 28, 28) float32, unclamped, ``samples.png`` (a grid of the first 100,
  clamped to [0, 1]) and ``samples.json`` (the sampling settings, so that a later evaluation
  reuses the array only when they match);
- an `EvalResult`: FID on the 84-d LeNet features against the 10,000 MNIST test images,
  Density and Coverage (Naeem et al. 2020, k = 5) on the same features, Shannon entropy of the
  LeNet class histogram, NLL in bits/dim on a few test images by the probability-flow ODE
  (when `scorefpe.sampling.likelihood` is present), and time per epoch from metrics.jsonl.

Bits/dim with uniform dequantization. Pixels are k/255, k in {0..255}, and the model's density p
lives on [0, 1]-scaled images. Dequantized points y = (k + u)/256, u ~ U[0, 1)^D, fill the D-cube
in 256^D cells of volume 256^-D, so by Jensen the discrete log-likelihood is bounded below by
E_u[log p(y)] - D log 256, and

    NLL [bits/dim] = -(log p(y) / D - log 256) / log 2 = -log p(y) / (D log 2) + 8,

Song et al. 2021's (App. D.2) "+ 8" for data in [0, 1] (their code adds 8 after rescaling).
The reported number is the mean over the images and one dequantization draw each, with its
standard error over the images; the Hutchinson divergence adds variance, not bias.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from scorefpe._util import atomic_output, atomic_write_text, machine_description, parse_choice
from scorefpe.operators import Probe
from scorefpe.sampling.samplers import get_sampler

Tensor = torch.Tensor

SAMPLES_NAME = "samples.npy"
EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
IMAGE_SHAPE = (1, 28, 28)

__all__ = [
    "EVAL_JSON",
    "EVAL_MD",
    "EvalConfig",
    "EvalResult",
    "SampleConfig",
    "bits_per_dim",
    "collect_report",
    "dequantize",
    "evaluate_run",
    "load_or_sample",
    "nll_bits_per_dim",
    "sample_run",
    "save_sample_grid",
    "save_samples",
    "time_per_epoch",
    "write_eval",
]


def _pos_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class SampleConfig:
    """How to draw samples from a run: sampler ('em', 'pc', 'rd', 'ode'), n samples, steps (SDE
    samplers; the ODE is adaptive and ignores it), seed, batch size, end time t_min, PC snr.

    Raises:
        ValueError: unknown sampler (naming the valid ones), n/steps/batch_size < 1, bad t_min.
    """

    n: int = 10_000
    sampler: str = "pc"
    steps: int = 500
    seed: int = 0
    batch_size: int = 500
    t_min: float = 1e-3
    snr: float = 0.16

    def __post_init__(self) -> None:
        get_sampler(self.sampler)
        for name in ("n", "steps", "batch_size"):
            _pos_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min!r}")
        if not (math.isfinite(self.snr) and self.snr > 0):
            raise ValueError(f"snr must be a finite number > 0, got {self.snr!r}")


def _check_run_dir(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"run directory {str(p)!r} does not exist")
    return p


def sample_run(
    run_dir: str | Path, cfg: SampleConfig, *, progress: bool = False
) -> tuple[Tensor, dict[str, Any]]:
    """Draw cfg.n samples (N, 1, 28, 28), float32, unclamped, from the run's EMA model.

    The generator is seeded with cfg.seed and the batches are fixed by cfg.batch_size, so the
    same (seed, batch_size, sampler, steps) reproduces the samples bit for bit on one machine.
    Cost: steps score evaluations per batch (em), steps * 2 (pc, one corrector step), or the
    adaptive solver's count (ode). Returns the samples and a dict of the settings, nfe, seconds.

    Raises:
        FileNotFoundError / ValueError: no run dir, not a loadable MNIST run.
    """
    from scorefpe.training.mnist_unet import load_run

    run_dir = _check_run_dir(run_dir)
    model, sde, _ = load_run(run_dir)
    gen = torch.Generator().manual_seed(cfg.seed)
    kw: dict[str, Any] = dict(
        t_min=cfg.t_min, generator=gen, batch_size=cfg.batch_size, progress=progress
    )
    if cfg.sampler != "ode":
        kw["n_steps"] = cfg.steps
    if cfg.sampler == "pc":
        kw["snr"] = cfg.snr
    t0 = time.perf_counter()
    with torch.no_grad():
        res = get_sampler(cfg.sampler)(model, sde, (cfg.n, *IMAGE_SHAPE), **kw)
    info = dict(asdict(cfg), nfe=int(res.nfe), seconds=time.perf_counter() - t0)
    return res.samples.float(), info


def sample_grid(samples: Tensor | np.ndarray, nrow: int = 10) -> np.ndarray:
    """The first nrow^2 samples (N, 1, 28, 28), clamped to [0, 1], tiled nrow to a row with a
    1-pixel white border: a (rows * 30, nrow * 30) float32 image."""
    x = np.clip(np.asarray(samples[: nrow * nrow], dtype=np.float32), 0, 1).reshape(-1, 28, 28)
    k = x.shape[0]
    rows = math.ceil(k / nrow)
    grid = np.ones((rows * 30, nrow * 30), dtype=np.float32)
    for i in range(k):
        r, c = divmod(i, nrow)
        grid[r * 30 + 1: r * 30 + 29, c * 30 + 1: c * 30 + 29] = x[i]
    return grid


def save_sample_grid(samples: Tensor, path: str | Path, *, nrow: int = 10) -> Path:
    """Write the first nrow^2 samples, clamped to [0, 1], as one grayscale PNG grid (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = sample_grid(samples.detach().float().cpu().numpy(), nrow)
    path = Path(path)
    with atomic_output(path) as tmp:
        plt.imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return path


def save_samples(samples: Tensor, info: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write samples to ``out`` (.npy), their grid to ``out`` with .png and the settings to .json.

    Each file is written atomically. Returns the three paths.
    """
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"sample file must end in .npy, got {str(out)!r}")
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, samples.detach().cpu().numpy().astype(np.float32))
    png = save_sample_grid(samples, out.with_suffix(".png"))
    meta = out.with_suffix(".json")
    atomic_write_text(meta, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {"npy": out, "png": png, "json": meta}


def load_or_sample(
    run_dir: str | Path, cfg: SampleConfig, *, progress: bool = False
) -> tuple[Tensor, dict[str, Any], bool]:
    """The run's samples.npy if its samples.json records the same SampleConfig, else new ones
    (saved). Returns (samples, info, reused)."""
    run_dir = _check_run_dir(run_dir)
    npy, meta = run_dir / SAMPLES_NAME, run_dir / "samples.json"
    if npy.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
        except json.JSONDecodeError:
            info = {}
        if all(info.get(k) == v for k, v in asdict(cfg).items()):
            arr = np.load(npy)
            if arr.shape == (cfg.n, *IMAGE_SHAPE):
                return torch.from_numpy(arr), info, True
    samples, info = sample_run(run_dir, cfg, progress=progress)
    save_samples(samples, info, npy)
    return samples, info, False


def time_per_epoch(run_dir: str | Path) -> dict[str, Any]:
    """Mean, median and spread of the seconds per complete epoch recorded in the run's
    metrics.jsonl (the median is robust to a few epochs slowed by other work on the machine).

    Returns {"mean_s", "median_s", "std_s", "n_epochs", "images_per_s"}; mean_s and median_s
    are None when no complete
    epoch was recorded (e.g. a run stopped by max_steps inside its first epoch). Lines cut by a
    crash are skipped.
    """
    from scorefpe._util import read_jsonl

    path = _check_run_dir(run_dir) / "metrics.jsonl"
    times, ips = [], []
    if path.is_file():
        for rec in read_jsonl(path):
            if rec.get("kind") == "epoch" and rec.get("complete", False):
                try:
                    times.append(float(rec["time_s"]))
                    ips.append(float(rec.get("images_per_s", float("nan"))))
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{path}: epoch record without a numeric time_s: "
                                     f"{rec}") from None
    if not times:
        return {"mean_s": None, "median_s": None, "std_s": None, "n_epochs": 0,
                "images_per_s": None}
    t = np.asarray(times)
    return {
        "mean_s": float(t.mean()),
        "median_s": float(np.median(t)),
        "std_s": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
        "n_epochs": len(t),
        "images_per_s": float(np.mean(ips)),
    }


def bits_per_dim(log_prob: Tensor, dim: int, n_bins: int = 256) -> Tensor:
    """NLL in bits/dim of dequantized data on [0, 1]: -(log p / D - log n_bins) / log 2 (module
    docstring). log_prob: (B,) nats of the continuous density at y = (k + u)/n_bins."""
    return -(log_prob / dim - math.log(n_bins)) / math.log(2.0)


def dequantize(images: Tensor, generator: torch.Generator | None, n_bins: int = 256) -> Tensor:
    """y = (k + u) / n_bins with k = round(x (n_bins - 1)), u ~ U[0, 1): uniform dequantization
    of images x = k/(n_bins - 1) in [0, 1]."""
    k = torch.round(images.double() * (n_bins - 1))
    u = torch.rand(images.shape, generator=generator, dtype=torch.float64)
    return ((k + u) / n_bins).to(images.dtype)


def nll_bits_per_dim(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: Any,
    images: Tensor,
    *,
    t_min: float = 1e-5,
    n_probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """NLL in bits/dim of ``images`` (B, 1, 28, 28), values k/255, under the model's
    probability-flow density at t_min, with uniform dequantization (module docstring).

    The divergence is Hutchinson with n_probes probes fixed for each ODE solve (exact would cost
    D = 784 VJPs per evaluation); ``probe`` 'rademacher' (default: lower variance, exact where
    the Jacobian is diagonal) or 'gaussian' (`scorefpe.sampling.likelihood`). Returns {"bpd", "se", "n", "nfe", ...}; se is the
    standard error over the B images (dequantization and probe noise included).

    Raises:
        ImportError: `scorefpe.sampling.likelihood` is not available.
        RuntimeError: the ODE solver failed.
    """
    from scorefpe.sampling.likelihood import probability_flow_likelihood

    y = dequantize(images.float(), generator)
    t0 = time.perf_counter()
    res = probability_flow_likelihood(
        score_fn, sde, y, t_min=t_min, rtol=rtol, atol=atol, divergence="hutchinson",
        n_probes=n_probes, probe=probe, generator=generator,
    )
    d = int(np.prod(images.shape[1:]))
    bpd = bits_per_dim(res.log_prob, d)
    n = int(bpd.numel())
    return {
        "bpd": float(bpd.mean()),
        "se": float(bpd.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "n": n,
        "nfe": int(res.nfe),
        "t_min": t_min,
        "n_probes": n_probes,
        "probe": str(getattr(probe, "value", probe)),
        "rtol": rtol,
        "atol": atol,
        "seconds": time.perf_counter() - t0,
    }


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings: the samples, k of density/coverage, how many test images for the
    NLL (0 skips it), its probes and tolerances, and whether to draw the noise-level
    diagnostics figure (with its grid size and points per t)."""

    sample: SampleConfig = field(default_factory=SampleConfig)
    k: int = 5
    nll_n: int = 16
    nll_probes: int = 1
    nll_probe: str = "rademacher"
    nll_rtol: float = 1e-5
    nll_atol: float = 1e-5
    diagnostics: bool = True
    diag_points: int = 32
    diag_n_t: int = 9

    def __post_init__(self) -> None:
        _pos_int("k", self.k)
        _pos_int("nll_probes", self.nll_probes)
        parse_choice(Probe, self.nll_probe, "nll_probe")
        _pos_int("diag_points", self.diag_points)
        if isinstance(self.nll_n, bool) or not isinstance(self.nll_n, int) or self.nll_n < 0:
            raise ValueError(f"nll_n must be an integer >= 0, got {self.nll_n!r}")
        if isinstance(self.diag_n_t, bool) or not isinstance(self.diag_n_t, int) or self.diag_n_t < 2:
            raise ValueError(f"diag_n_t must be an integer >= 2, got {self.diag_n_t!r}")


@dataclass(frozen=True)
class EvalResult:
    """The numbers of one run (see the module docstring); ``nll`` is None when skipped or the
    likelihood module is missing (``nll_note`` says why); times in seconds."""

    run_dir: str
    config: dict[str, Any]
    sampling: dict[str, Any]
    samples_reused: bool
    n_reference: int
    fid: float
    density: float
    coverage: float
    entropy_nats: float
    entropy_max_nats: float
    nll: dict[str, Any] | None
    nll_note: str
    time_per_epoch: dict[str, Any]
    diagnostics_png: str | None
    machine: str
    seconds: float
    # The feature extractor the numbers depend on: `weights_sha256` of the LeNet's parameters
    # (the shipped file's is in docs/metrics.md).
    lenet_weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_run(
    run_dir: str | Path,
    cfg: EvalConfig,
    *,
    reference: Tensor | None = None,
    lenet: Any = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate one run directory (module docstring); writes samples.* and diagnostics.png there.

    reference: real images (N, 1, 28, 28) in [0, 1] for FID/density/coverage and the NLL
    subset (default: the 10,000 MNIST test images from the cache). lenet: a loaded LeNet
    (default: `load_lenet()`). echo: called with a line at the start of each stage (the
    library prints nothing itself). Cost: sampling (see `sample_run`), one LeNet pass over samples
    and reference, density/coverage O(N_ref^2 D), the NLL ODE on nll_n images, diagnostics.

    Raises:
        FileNotFoundError: no run dir, no LeNet weights, no MNIST test set.
        ValueError: a run that cannot be loaded.
    """
    from scorefpe.metrics.lenet import lenet_features, lenet_probs, load_lenet, weights_sha256
    from scorefpe.metrics.sample_quality import (
        class_entropy,
        density_coverage,
        frechet_distance,
    )
    from scorefpe.training.mnist_unet import load_run

    say = echo if echo is not None else (lambda _m: None)
    t_start = time.perf_counter()
    run_dir = _check_run_dir(run_dir)
    model, sde, config = load_run(run_dir)  # fail early on a bad run dir
    if reference is None:
        from scorefpe.data.mnist import mnist_tensor

        reference, _ = mnist_tensor("test")
    if lenet is None:
        lenet = load_lenet()

    say(f"samples: {cfg.sample.n} by {cfg.sample.sampler} (reused if samples.json matches)")
    samples, info, reused = load_or_sample(run_dir, cfg.sample, progress=progress)
    say(f"LeNet features, FID, density/coverage (k={cfg.k}), entropy")
    fake = samples.float().clamp(0.0, 1.0)
    real = reference.float()
    f_fake = lenet_features(lenet, fake)
    f_real = lenet_features(lenet, real)
    fid = frechet_distance(f_fake, f_real)
    dc = density_coverage(f_real, f_fake, k=cfg.k)
    ent = class_entropy(lenet_probs(lenet, fake))

    nll: dict[str, Any] | None = None
    if cfg.nll_n == 0:
        note = "skipped (nll_n = 0)"
    else:
        try:
            importlib.import_module("scorefpe.sampling.likelihood")
        except ImportError as e:
            note = f"likelihood module unavailable: {e}"
        else:
            say(f"NLL by the probability-flow ODE on {cfg.nll_n} test images")
            t_min_run = float(config.get("penalty", {}).get("t_min", 1e-5))
            nll = nll_bits_per_dim(
                model, sde, real[: cfg.nll_n], t_min=t_min_run, n_probes=cfg.nll_probes,
                probe=cfg.nll_probe,
                rtol=cfg.nll_rtol, atol=cfg.nll_atol,
                generator=torch.Generator().manual_seed(cfg.sample.seed),
            )
            note = (f"first {nll['n']} reference images, one dequantization draw each, "
                    f"Hutchinson divergence ({cfg.nll_probes} {cfg.nll_probe} probe(s))")

    diag_png: str | None = None
    if cfg.diagnostics:
        from scorefpe.evaluation.diagnostics import plot_diagnostics, run_diagnostics

        say(f"diagnostics over noise levels ({cfg.diag_n_t} t, {cfg.diag_points} points each)")
        curves = run_diagnostics(
            model, sde, real, n_points=cfg.diag_points, n_t=cfg.diag_n_t,
            t_min=float(config.get("penalty", {}).get("t_min", 1e-5)),
            generator=torch.Generator().manual_seed(cfg.sample.seed),
        )
        diag_png = str(plot_diagnostics({run_dir.name: curves}, run_dir / "diagnostics.png"))
        atomic_write_text(run_dir / "diagnostics.json",
                          json.dumps(curves.to_dict(), indent=2) + "\n")

    return EvalResult(
        run_dir=str(run_dir),
        config=asdict(cfg),
        sampling=info,
        samples_reused=reused,
        n_reference=int(real.shape[0]),
        fid=fid,
        density=dc.density,
        coverage=dc.coverage,
        entropy_nats=ent,
        entropy_max_nats=math.log(10),
        nll=nll,
        nll_note=note,
        time_per_epoch=time_per_epoch(run_dir),
        diagnostics_png=diag_png,
        machine=machine_description(),
        seconds=time.perf_counter() - t_start,
        lenet_weights_sha256=weights_sha256(lenet),
    )


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def summary_markdown(res: EvalResult) -> str:
    """A short markdown summary of an EvalResult."""
    s = res.sampling
    nll = res.nll
    tpe = res.time_per_epoch
    lines = [
        f"# Evaluation of `{res.run_dir}`",
        "",
        f"Samples: {s['n']} by `{s['sampler']}` ({s['steps']} steps, t_min {s['t_min']}, seed "
        f"{s['seed']}, batch {s['batch_size']}), nfe {s.get('nfe')}"
        + (" (reused samples.npy)" if res.samples_reused else "") + ".",
        f"Reference: {res.n_reference} real images. Machine: {res.machine}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| FID (LeNet, 84-d features) | {res.fid:.4g} |",
        f"| Density (k={res.config['k']}) | {res.density:.4g} |",
        f"| Coverage (k={res.config['k']}) | {res.coverage:.4g} |",
        f"| Class entropy (nats; max {res.entropy_max_nats:.4f}) | {res.entropy_nats:.4f} |",
        ("| NLL (bits/dim) | n/a |" if nll is None else
         f"| NLL (bits/dim, n = {nll['n']}) | {nll['bpd']:.4g} +- {nll['se']:.2g} |"),
        f"| Time per epoch (s, {tpe['n_epochs']} epochs) | {_fmt(tpe['mean_s'])} |",
        "",
        f"NLL: {res.nll_note}" + ("" if nll is None else
                                  f"; nfe {nll['nfe']}, rtol {nll['rtol']}, atol {nll['atol']}, "
                                  f"t_min {nll['t_min']}."),
        f"Evaluation took {res.seconds:.1f} s.",
    ]
    if res.diagnostics_png:
        lines += ["", f"![diagnostics over noise levels]({Path(res.diagnostics_png).name})"]
    return "\n".join(lines) + "\n"


def write_eval(res: EvalResult, run_dir: str | Path) -> dict[str, Path]:
    """Write eval.json and eval.md into run_dir atomically; returns their paths."""
    run_dir = Path(run_dir)
    j, m = run_dir / EVAL_JSON, run_dir / EVAL_MD
    atomic_write_text(j, json.dumps(res.to_dict(), indent=2, sort_keys=True) + "\n")
    atomic_write_text(m, summary_markdown(res))
    return {"json": j, "md": m}


def collect_report(directory: str | Path) -> str:
    """One markdown report of every run directory under ``directory`` (itself or its direct
    subdirectories) holding an eval.json: a table of the metrics and, when the runs saved
    diagnostics.json, one figure of all their diagnostics curves (report_diagnostics.png).

    Raises:
        ValueError: no eval.json found.
    """
    import torch as _t

    from scorefpe.evaluation.diagnostics import DiagnosticCurves, plot_diagnostics
    from scorefpe.residuals import Curve

    directory = Path(directory)
    runs = [d for d in [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]
            if (d / EVAL_JSON).is_file()]
    if not runs:
        raise ValueError(f"no {EVAL_JSON} in {str(directory)!r} or its subdirectories")
    lines = [
        f"# Evaluation report: `{directory}`", "",
        "| run | penalty | lambda | sampler | n | FID | density | coverage | entropy (nats) "
        "| NLL (bits/dim) | s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    curves: dict[str, DiagnosticCurves] = {}
    from scorefpe._util import read_json

    for d in runs:
        r = read_json(d / EVAL_JSON, "eval.json")
        if not isinstance(r, dict) or not {"sampling", "fid", "density", "coverage",
                                           "entropy_nats", "time_per_epoch"} <= set(r):
            raise ValueError(f"{d / EVAL_JSON} is not an eval.json of `scorefpe eval` (keys "
                             "missing); delete it or run `scorefpe eval` again")
        try:
            pen = json.loads((d / "config.json").read_text()).get("penalty", {})
        except (OSError, json.JSONDecodeError):
            pen = {}
        nll = r.get("nll")
        s = r["sampling"]
        lines.append(
            f"| {d.name} | {pen.get('penalty', '?')} | {pen.get('lam', '?')} | {s['sampler']} "
            f"({s['steps']}) | {s['n']} | {r['fid']:.4g} | {r['density']:.3f} "
            f"| {r['coverage']:.3f} | {r['entropy_nats']:.3f} | "
            + ("n/a" if nll is None else f"{nll['bpd']:.3f} +- {nll['se']:.2g} (n={nll['n']})")
            + f" | {_fmt(r['time_per_epoch']['mean_s'])} |"
        )
        dj = d / "diagnostics.json"
        if dj.is_file():
            raw = read_json(dj, "diagnostics.json")

            def _curve(name: str, rows: list[dict[str, float]]) -> Curve:
                return Curve(name, _t.tensor([x["t"] for x in rows]),
                             _t.tensor([x["mean"] for x in rows]),
                             _t.tensor([x["se"] for x in rows]))

            try:
                curves[d.name] = DiagnosticCurves(
                    _curve("r_FP", raw["r_FP"]), _curve("r_DSM", raw["r_DSM"]),
                    _curve("jac_fro", raw["jac_fro"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{dj} is not a diagnostics.json of `scorefpe eval` ({err!r}); "
                                 "delete it or run `scorefpe eval` again") from None
    lines.append("")
    lines.append(f"Machine of the last evaluation: {r['machine']}.")
    if curves:
        png = plot_diagnostics(curves, directory / "report_diagnostics.png")
        lines += ["", f"![diagnostics over noise levels]({png.name})"]
    return "\n".join(lines) + "\n"


"""Score maps and divergence maps of one digit over noise levels (the 2026 paper, Figs. 2-5).

For one fixed image x0 (C, H, W) and each time t of a list, n noises z_j ~ N(0, I) give
x_j(t) = a(t) x0 + sigma(t) z_j (sigma(t) = the SDE's marginal std). Per pixel i we compute

    s_i(x_j, t)                      the score,            and sigma(t) s_i  (about -z_i if the
                                                             model predicts the noise);
    d_i(x_j, t) = d s_i / d x_i      the pixel-wise contribution to div_x s (Jacobian diagonal,
                                     `operators.jacobian_diagonal`), and sigma(t)^2 d_i, about -1
                                     for a converged model;

for one draw (j = 0, Fig. 2: the diagonal exactly, D VJPs) and averaged over the n draws with
their per-pixel standard errors (Fig. 3). The average is an estimate of E_z[s_i] and
E_z[d_i] at fixed x0; with several runs side by side (rows = runs, columns = t) this is Figs. 4-5.

Noise draws are common random numbers: the z of every t come from one generator seeded by
``seed``, so every run sees the same noisy images and differences between runs are not noise.

Jacobian diagonal of the average: ``exact`` (D = 784 VJPs per draw) or ``hutchinson``
(1/K sum_k v_k * (J^T v_k), Rademacher probes by default; Bekas et al. 2007), unbiased. The
standard error of the averaged map is the spread over the n draws / sqrt(n), so it includes the
probe noise: per draw and pixel the probe variance is sum_{r != i} J_ri^2 / K (Rademacher).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from scorefpe import operators
from scorefpe._util import atomic_output, atomic_write_text, parse_choice, run_labels, save_figure
from scorefpe.operators import DivergenceMethod, Probe

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

PAPER_TIMES: tuple[float, ...] = (1e-4, 1e-3, 0.01, 0.03, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
MAPS_NPZ = "maps.npz"
MAPS_JSON = "maps.json"

__all__ = [
    "MAPS_JSON",
    "MAPS_NPZ",
    "MapConfig",
    "PAPER_TIMES",
    "ScoreMaps",
    "compute_maps",
    "maps_for_runs",
    "plot_average",
    "plot_compare",
    "plot_single",
    "write_maps",
]


@dataclass(frozen=True)
class MapConfig:
    """Settings of the maps: the times, the number of noise draws n, how the averaged Jacobian
    diagonal is computed (method, n_probes K and probe for ``hutchinson``), noise draws per batch
    (memory: batch_size * K, or batch_size * chunk_size for exact, images per backward pass), the
    seed of the noise (probes use seed + 1).

    Raises:
        ValueError: no times, a time <= 0 or not finite, n_noise / n_probes / batch_size /
            chunk_size < 1, unknown method or probe (naming the valid ones).
    """

    times: tuple[float, ...] = PAPER_TIMES
    n_noise: int = 200
    method: DivergenceMethod = DivergenceMethod.HUTCHINSON
    n_probes: int = 64
    probe: Probe = Probe.RADEMACHER
    batch_size: int = 16
    chunk_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_choice(DivergenceMethod, self.method, "method"))
        object.__setattr__(self, "probe", parse_choice(Probe, self.probe, "probe"))
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        if not self.times:
            raise ValueError("times must hold at least one time")
        bad = [t for t in self.times if not (math.isfinite(t) and t > 0)]
        if bad:
            raise ValueError(f"times must be positive and finite, got {bad}")
        for name in ("n_noise", "n_probes", "batch_size", "chunk_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(times=list(self.times), method=self.method.value, probe=self.probe.value)
        return d


@dataclass(frozen=True)
class ScoreMaps:
    """The arrays of one run (numpy float64). T times, image shape (C, H, W).

    times, sigma, mean_coeff: (T,). x0: (C, H, W). For the single draw j = 0: z_one, x_one,
    score_one, diag_one (T, C, H, W), diag_one exact. Over the n draws: score_mean, score_se,
    diag_mean, diag_se (T, C, H, W), se = sample std (ddof 1) / sqrt(n).
    """

    times: np.ndarray
    sigma: np.ndarray
    mean_coeff: np.ndarray
    x0: np.ndarray
    z_one: np.ndarray
    x_one: np.ndarray
    score_one: np.ndarray
    diag_one: np.ndarray
    score_mean: np.ndarray
    score_se: np.ndarray
    diag_mean: np.ndarray
    diag_se: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    ARRAYS = ("z_one", "x_one", "score_one", "diag_one", "score_mean", "score_se", "diag_mean",
              "diag_se")

    def scaled(self, name: str, power: int) -> np.ndarray:
        """sigma(t)^power * array, broadcast over the pixels of each t."""
        return getattr(self, name) * self.sigma.reshape(-1, 1, 1, 1) ** power

    def summary(self) -> list[dict[str, float]]:
        """Per t: the pixel means of sigma s-bar and sigma^2 d-bar, with the standard error of the
        latter's pixel mean (from the per-pixel se, pixels treated as independent: a lower
        bound, since neighbouring pixels correlate)."""
        sd = self.scaled("diag_mean", 2)
        sd_se = self.scaled("diag_se", 2)
        ss = self.scaled("score_mean", 1)
        rows = []
        for k, t in enumerate(self.times):
            n_pix = sd[k].size
            rows.append({
                "t": float(t), "sigma": float(self.sigma[k]),
                "sigma_score_mean": float(ss[k].mean()),
                "sigma2_diag_mean": float(sd[k].mean()),
                "sigma2_diag_mean_se": float(np.sqrt((sd_se[k] ** 2).sum()) / n_pix),
                "sigma2_diag_one_mean": float(self.scaled("diag_one", 2)[k].mean()),
            })
        return rows


def _check_x0(x0: Tensor) -> None:
    if not isinstance(x0, Tensor) or x0.dim() != 3 or not x0.is_floating_point():
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be one floating-point image of shape (C, H, W), got {got}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or infinite values")


def compute_maps(
    score_fn: ScoreFn,
    sde: Any,
    x0: Tensor,
    cfg: MapConfig = MapConfig(),
    *,
    t_min: float = 0.0,
    progress: bool = False,
) -> ScoreMaps:
    """Score and Jacobian-diagonal maps of ``score_fn`` at x(t) = a(t) x0 + sigma(t) z (module
    docstring): one draw (exact diagonal) and the average over cfg.n_noise draws.

    x0: (C, H, W); score_fn takes (B, C, H, W) and t (B,). t_min: the model's smallest time.
    Cost per t: n / batch_size forward passes for the score, plus n K VJPs (hutchinson) or n D
    VJPs (exact) for the averaged diagonal, plus D VJPs for the single draw.

    Raises:
        ValueError: x0 not (C, H, W) or not finite, a time outside [t_min, sde.T], and the
            operators' errors (e.g. a score_fn whose output is not shaped like x).
    """
    _check_x0(x0)
    t_hi = float(getattr(sde, "T", 1.0))
    bad = [t for t in cfg.times if t < t_min or t > t_hi]
    if bad:
        raise ValueError(f"times must lie in [t_min, T] = [{t_min}, {t_hi}]; got {bad}")
    from tqdm.auto import tqdm

    gz = torch.Generator().manual_seed(cfg.seed)
    gp = torch.Generator().manual_seed(cfg.seed + 1)
    n, shape = cfg.n_noise, tuple(x0.shape)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ScoreMaps.ARRAYS}
    sigmas, coeffs = [], []
    bar = tqdm(total=len(cfg.times) * n, desc="maps", unit="draw", disable=not progress)
    for t in cfg.times:
        z = torch.randn((n, *shape), generator=gz, dtype=x0.dtype)
        tt1 = torch.full((1,), t, dtype=x0.dtype)
        a = float(sde.mean_coeff(tt1)[0])
        sig = float(sde.marginal_std(tt1)[0])
        sigmas.append(sig)
        coeffs.append(a)
        x = a * x0.unsqueeze(0) + sig * z
        scores, diags = [], []
        for i0 in range(0, n, cfg.batch_size):
            xb = x[i0:i0 + cfg.batch_size]
            tb = torch.full((xb.shape[0],), t, dtype=x0.dtype)
            with torch.no_grad():
                scores.append(score_fn(xb, tb).detach())
            diags.append(operators.jacobian_diagonal(
                score_fn, xb, tb, method=cfg.method, n_probes=cfg.n_probes, probe=cfg.probe,
                generator=gp, chunk_size=cfg.chunk_size))
            bar.update(xb.shape[0])
        s = torch.cat(scores).double()
        d = torch.cat(diags).double()
        if s.shape != x.shape:
            raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}; "
                             f"got {tuple(s.shape)}")
        if cfg.method is DivergenceMethod.EXACT:
            d_one = d[:1]
        else:
            d_one = operators.jacobian_diagonal(
                score_fn, x[:1], tt1, method="exact", chunk_size=cfg.chunk_size).double()
        se = (lambda v: v.std(0, unbiased=True) / math.sqrt(n)) if n > 1 else (
            lambda v: torch.full_like(v[0], float("nan")))
        for name, val in (("z_one", z[0]), ("x_one", x[0]), ("score_one", s[0]),
                          ("diag_one", d_one[0]), ("score_mean", s.mean(0)),
                          ("score_se", se(s)), ("diag_mean", d.mean(0)), ("diag_se", se(d))):
            out[name].append(val.double().numpy())
    bar.close()
    return ScoreMaps(
        times=np.array(cfg.times, dtype=np.float64), sigma=np.array(sigmas),
        mean_coeff=np.array(coeffs), x0=x0.double().numpy(),
        **{k: np.stack(v) for k, v in out.items()}, config=cfg.to_dict(),
    )


# --------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg). Channel 0 of each image is shown.
# --------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tlabel(t: float) -> str:
    return f"t={t:.0e}" if t < 0.01 else f"t={t:g}"


def _lim(a: np.ndarray) -> float:
    """Symmetric colour limit: the 99.5th percentile of |a| (a few outlier pixels would
    otherwise wash the map out), at least a tiny positive number."""
    v = float(np.percentile(np.abs(a), 99.5)) if a.size else 0.0
    return v if v > 0 and math.isfinite(v) else 1e-12


def _save(fig: Any, path: str | Path) -> Path:
    return save_figure(fig, path, dpi=100)


def _grid(rows: list[tuple[str, np.ndarray, str, str]], times: np.ndarray, title: str) -> Any:
    """rows: (label, array (T, C, H, W), scale "row" | "panel", cmap). "row": one symmetric
    colour range for the row (a colorbar at its end); "panel": each panel its own range, shown
    above it. Images ("gray" cmap) use the row's min..max instead."""
    plt = _plt()
    nt = len(times)
    fig, axes = plt.subplots(len(rows), nt, figsize=(1.25 * nt + 1.2, 1.35 * len(rows) + 0.6),
                             squeeze=False)
    for r, (label, arr, scale, cmap) in enumerate(rows):
        im = None
        for k in range(nt):
            ax = axes[r][k]
            a = arr[k, 0]
            if cmap == "gray":
                kw = dict(vmin=float(arr[:, 0].min()), vmax=float(arr[:, 0].max()))
            else:
                v = _lim(arr[:, 0]) if scale == "row" else _lim(a)
                kw = dict(vmin=-v, vmax=v)
            im = ax.imshow(a, cmap=cmap, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            head = _tlabel(float(times[k])) + "\n" if r == 0 else ""
            if scale == "panel":
                ax.set_title(f"{head}±{_lim(a):.2g}", fontsize=7)
            elif head:
                ax.set_title(head.strip(), fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=8)
        if scale == "row" and im is not None:
            fig.colorbar(im, ax=list(axes[r]), fraction=0.012, pad=0.01)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_single(maps: ScoreMaps, path: str | Path, label: str = "") -> Path:
    """Fig. 2: one noise draw. Rows x(t), s, sigma s, -z, sigma^2 ds_i/dx_i (exact)."""
    rows = [
        ("x(t)", maps.x_one, "row", "gray"),
        ("s (own scale)", maps.score_one, "panel", "RdBu_r"),
        ("sigma s", maps.scaled("score_one", 1), "row", "RdBu_r"),
        ("-z", -maps.z_one, "row", "RdBu_r"),
        ("sigma^2 ds_i/dx_i", maps.scaled("diag_one", 2), "row", "RdBu_r"),
    ]
    fig = _grid(rows, maps.times, f"{label}: one noise draw; Jacobian diagonal exact "
                f"({maps.x0[0].size} VJPs)")
    return _save(fig, path)


def _method_note(cfg: dict[str, Any]) -> str:
    if cfg.get("method") == "hutchinson":
        return f"Hutchinson diagonal, {cfg.get('n_probes')} {cfg.get('probe')} probes per draw"
    return "exact diagonal"


def plot_average(maps: ScoreMaps, path: str | Path, label: str = "") -> Path:
    """Fig. 3: averages over the n draws. Rows x(t) (one draw), s-bar, sigma s-bar,
    d-bar = mean ds_i/dx_i, sigma^2 d-bar."""
    rows = [
        ("x(t), one draw", maps.x_one, "row", "gray"),
        ("mean s (own scale)", maps.score_mean, "panel", "RdBu_r"),
        ("sigma * mean s", maps.scaled("score_mean", 1), "panel", "RdBu_r"),
        ("mean ds_i/dx_i\n(own scale)", maps.diag_mean, "panel", "RdBu_r"),
        ("sigma^2 * mean\nds_i/dx_i", maps.scaled("diag_mean", 2), "row", "RdBu_r"),
    ]
    n = maps.config.get("n_noise")
    fig = _grid(rows, maps.times, f"{label}: averages over {n} noise draws; "
                f"{_method_note(maps.config)}")
    return _save(fig, path)


_QUANTITIES = {
    "score": ("score_mean", 1, "sigma(t) * mean score"),
    "div": ("diag_mean", 2, "sigma(t)^2 * mean ds_i/dx_i"),
}


def plot_compare(maps: dict[str, ScoreMaps], path: str | Path, quantity: str) -> Path:
    """Figs. 4 (quantity "score": sigma s-bar) and 5 ("div": sigma^2 d-bar): rows = runs,
    columns = t; one colour range per column, shared by the runs (shown above the column).

    Raises:
        ValueError: no runs, unknown quantity, or runs with different times.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; choose one of {sorted(_QUANTITIES)}")
    if not maps:
        raise ValueError("no maps to plot")
    name, power, what = _QUANTITIES[quantity]
    first = next(iter(maps.values()))
    if any(not np.array_equal(m.times, first.times) for m in maps.values()):
        raise ValueError("all runs must have maps at the same times")
    plt = _plt()
    nt, nr = len(first.times), len(maps)
    fig, axes = plt.subplots(nr, nt, figsize=(1.25 * nt + 1.2, 1.35 * nr + 0.8), squeeze=False)
    arrs = {k: m.scaled(name, power)[:, 0] for k, m in maps.items()}
    for k in range(nt):
        v = _lim(np.stack([a[k] for a in arrs.values()]))
        for r, (label, a) in enumerate(arrs.items()):
            ax = axes[r][k]
            ax.imshow(a[k], cmap="RdBu_r", vmin=-v, vmax=v)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{_tlabel(float(first.times[k]))}\n±{v:.2g}", fontsize=7)
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"{what}, {first.config.get('n_noise')} noise draws; "
                 f"{_method_note(first.config)}", fontsize=9)
    return _save(fig, path)


def write_maps(maps: dict[str, ScoreMaps], out_dir: str | Path) -> dict[str, Path]:
    """Write, atomically, under ``out_dir``: maps.npz (every array stacked over runs, axis 0 in
    the order of ``runs``), maps.json (settings and `ScoreMaps.summary` per run), and the PNGs
    maps_single_<run>.png, maps_average_<run>.png, maps_score_runs.png, maps_div_runs.png.

    Raises:
        ValueError: no runs.
    """
    if not maps:
        raise ValueError("no maps to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(maps)
    first = maps[names[0]]
    arrays: dict[str, np.ndarray] = {
        "runs": np.array(names), "times": first.times,
        "sigma": first.sigma, "mean_coeff": first.mean_coeff, "x0": first.x0,
    }
    for key in ScoreMaps.ARRAYS:
        arrays[key] = np.stack([getattr(maps[k], key) for k in names])
    paths: dict[str, Path] = {"npz": out / MAPS_NPZ, "json": out / MAPS_JSON}
    with atomic_output(paths["npz"]) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    atomic_write_text(paths["json"], json.dumps(
        {"config": first.config, "runs": {k: m.summary() for k, m in maps.items()}},
        indent=2) + "\n")
    for k, m in maps.items():
        paths[f"single_{k}"] = plot_single(m, out / f"maps_single_{k}.png", k)
        paths[f"average_{k}"] = plot_average(m, out / f"maps_average_{k}.png", k)
    paths["score_runs"] = plot_compare(maps, out / "maps_score_runs.png", "score")
    paths["div_runs"] = plot_compare(maps, out / "maps_div_runs.png", "div")
    return paths


def maps_for_runs(
    run_dirs: list[str | Path],
    x0: Tensor,
    out_dir: str | Path,
    cfg: MapConfig = MapConfig(),
    *,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Load each MNIST run directory's EMA model (`load_run`), compute its maps at the same x0
    and the same noise draws, and `write_maps` them under ``out_dir`` (labels: directory names).

    Raises:
        ValueError: run directories with equal names, and what load_run / compute_maps raise.
        FileNotFoundError: a run without config.json / checkpoint.
    """
    from scorefpe.training.mnist_unet import load_run

    names = run_labels(run_dirs)
    say = echo if echo is not None else (lambda _m: None)
    maps: dict[str, ScoreMaps] = {}
    for rd, name in zip(run_dirs, names):
        model, sde, config = load_run(rd)
        t_min = float(config.get("penalty", {}).get("t_min", 1e-5))
        say(f"{name}: {len(cfg.times)} times x {cfg.n_noise} draws ({_method_note(cfg.to_dict())})")
        maps[name] = compute_maps(model, sde, x0, cfg, t_min=t_min, progress=progress)
    return write_maps(maps, out_dir)

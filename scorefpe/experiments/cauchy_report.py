"""Convergence over seeds of `scorefpe cauchy` runs: one figure and one CSV for several run
directories of the same data set and SDE (typically the seeds of one setting).

The figure has (a) the q_t-weighted relative score error over t, one line per run, read from
each run's results.json (no recomputation), with the 5 % target and the band t in [0.05, 1]
that the targets average over; for mixtures of 2-3 modes, (b) the error of the log mass ratio
between neighbouring modes that each run's score implies, over t (`log_ratio_error`: where a run
gains or loses the mode weights); and (c) the learned vs the true density q_t at a few times, one
panel per time, every run overlaid on the exact density. In 2-D the density is shown on a line
(`density_line`): the slice through the two component centres farthest apart, which for gmm2d's two
isotropic modes of equal covariance is itself a two-mode mixture with the data's weights 0.2 /
0.8 (the slice of a sum of N(mu_k, sigma^2 I) through both means is sum_k pi_k N along it
times a common factor). The learned slice is exp of the line integral of the learned score,
log p~(x(s)) = int u . s~(x(s'), t) ds' (`line_log_density`): it needs only the score (no
ODE), and equals the true slice when s~ is the true score, up to the trapezoid rule's error.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from scorefpe._util import atomic_write_text, read_json, save_figure

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

BAND = (0.05, 1.0)  # the t range of the targets' mean score error (evaluate_model's uniform grid)
TARGET_ERROR = 0.05  # the 5 % target on the mean relative score error
WEIGHT_TOLERANCE = 0.03  # the mode-weight target: every weight within 0.03 of the data's
MAX_PAIRS = 2  # log-ratio panel for mixtures of up to 3 modes (gmm2d, gmm1d); more would not be legible

__all__ = [
    "BAND",
    "MAX_PAIRS",
    "TARGET_ERROR",
    "WEIGHT_TOLERANCE",
    "CauchyRunError",
    "DensityLine",
    "SeedOverlay",
    "SeedRun",
    "band_summary",
    "OverlayData",
    "check_comparable",
    "collect_overlay",
    "default_times",
    "density_line",
    "line_log_density",
    "log_ratio_tolerance",
    "mass_below",
    "overlay_rows",
    "plot_seed_overlay",
    "read_cauchy_run",
    "seed_overlay",
    "true_line_density",
]


class CauchyRunError(ValueError):
    """A directory is not a finished `scorefpe cauchy` run, or the runs given together are not
    of one data set and SDE. The message names the directory or the differing value."""


@dataclass(frozen=True)
class SeedRun:
    """What one run's results.json says about one of its models (``model``: pinn or dsm).

    t_grid, rel_err: the score-error curve (T,) of `evaluate_model`; mean_rel_err: its stored
    mean over the band; mode_weights: {sampler (em, ode): weights (K,)} for mixtures ({}
    otherwise); target_mode_weights: the data's weights (K,) or None.
    """

    run_dir: Path
    model: str
    config: dict[str, Any]
    t_grid: tuple[float, ...]
    rel_err: tuple[float, ...]
    mean_rel_err: float
    mode_weights: dict[str, tuple[float, ...]]
    target_mode_weights: tuple[float, ...] | None

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def sde(self) -> str:
        return str(self.config["sde"])

    @property
    def t_min(self) -> float:
        return float(self.config["t_min"])


def read_cauchy_run(run_dir: str | Path, model: str = "pinn") -> SeedRun:
    """The `SeedRun` of ``model`` in the finished cauchy run ``run_dir`` (results.json written
    by `run_cauchy` with that model evaluated, and its checkpoint beside it).

    Raises:
        CauchyRunError: run_dir is not a directory, has no readable results.json, or that file
            has no evaluation of ``model`` (not a cauchy run, unfinished, or its evaluation
            failed), or ``model``'s checkpoint is missing.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise CauchyRunError(f"{str(d)!r} is not a directory")
    path = d / "results.json"
    if not path.is_file():
        raise CauchyRunError(f"{str(d)!r} is not a finished `scorefpe cauchy` run (no results.json)")
    try:
        res = read_json(path, "results.json")
        cfg = res["config"]
        ev = res["runs"][model]["eval"]
        t_grid = tuple(float(v) for v in ev["t_grid"])
        rel_err = tuple(float(v) for v in ev["rel_err"])
        mean = float(ev["mean_rel_err"])
        missing = [k for k in ("dataset", "sde", "seed", "t_min") if k not in cfg]
    except ValueError as err:
        raise CauchyRunError(str(err)) from None
    except (KeyError, TypeError):
        raise CauchyRunError(f"{str(path)!r} holds no evaluated {model!r} model of a `scorefpe cauchy` "
                             "run") from None
    if missing:
        raise CauchyRunError(f"{str(path)!r}: its config lacks {missing}")
    if len(t_grid) != len(rel_err) or not t_grid:
        raise CauchyRunError(f"{str(path)!r}: t_grid and rel_err differ in length")
    if not (d / model / "checkpoint.pt").is_file():
        raise CauchyRunError(f"{str(d / model)!r} has no checkpoint.pt")
    samples = ev.get("samples", {})
    weights = {s: tuple(float(v) for v in samples[s]["mode_weights"])
               for s in ("em", "ode") if "mode_weights" in samples.get(s, {})}
    target = samples.get("target_mode_weights")
    return SeedRun(run_dir=d, model=model, config=dict(cfg), t_grid=t_grid, rel_err=rel_err,
                   mean_rel_err=mean, mode_weights=weights,
                   target_mode_weights=None if target is None else tuple(float(v) for v in target))


def check_comparable(runs: Sequence[SeedRun]) -> None:
    """Refuse runs that cannot share one figure: none, the same directory twice, or more than
    one data set, SDE or t_min (the initial condition).

    Raises:
        CauchyRunError: naming the first run that differs and the value.
    """
    if not runs:
        raise CauchyRunError("no run directories given")
    first = runs[0]
    seen: dict[Path, SeedRun] = {}
    for r in runs:
        key = r.run_dir.resolve()
        if key in seen:
            raise CauchyRunError(f"{str(r.run_dir)!r} is given twice")
        seen[key] = r
        for name in ("dataset", "sde", "t_min"):
            if r.config[name] != first.config[name]:
                raise CauchyRunError(
                    f"{str(r.run_dir)!r} has {name} {r.config[name]!r}, but {str(first.run_dir)!r} has "
                    f"{first.config[name]!r}: give runs of one data set, SDE and t_min")


def band_summary(t_grid: Sequence[float], rel_err: Sequence[float],
                 band: tuple[float, float] = BAND) -> tuple[float, float, float]:
    """(mean, max, t of the max) of the relative score error over the grid points with t in
    ``band`` (closed; a 1e-9 slack for the grid's round-off at its ends).

    Raises:
        ValueError: no grid point in the band.
    """
    pts = [(t, e) for t, e in zip(t_grid, rel_err) if band[0] - 1e-9 <= t <= band[1] + 1e-9]
    if not pts:
        raise ValueError(f"no point of the t grid lies in {band}")
    t_max, e_max = max(pts, key=lambda p: p[1])
    return math.fsum(e for _, e in pts) / len(pts), e_max, t_max


@dataclass(frozen=True)
class DensityLine:
    """A line x(s) = origin + s u in R^D (u a unit vector (D,), origin (D,), float64) and the
    range [s_lo, s_hi] shown; ``what`` says in words which line it is (for titles); ``split``:
    for a line through two component centres, the s of their midpoint (the mass below it is
    the first component's share of the slice, `mass_below`), else None."""

    origin: Tensor
    direction: Tensor
    s_lo: float
    s_hi: float
    what: str
    split: float | None = None

    def points(self, n: int) -> tuple[Tensor, Tensor]:
        """(s (n,), x(s) (n, D)), n equally spaced s in [s_lo, s_hi], float64."""
        s = torch.linspace(self.s_lo, self.s_hi, n, dtype=torch.float64)
        return s, self.origin[None] + s[:, None] * self.direction[None]


def _fmt_point(p: Tensor) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in p) + ")"


def _mode_centres(truth: Any) -> Tensor | None:
    """(K, D) centres of the components of a data set's exact model: the means of a Gaussian
    mixture, the box centres of a box mixture (the checkerboard's squares), else None."""
    if getattr(truth, "means", None) is not None:
        return truth.means.double()
    if getattr(truth, "lower", None) is not None:
        return (0.5 * (truth.lower + truth.upper)).double()
    return None


def density_line(dataset: Any, sde: Any, t: float, *, n_ref: int = 20000, q: float = 1e-3) -> DensityLine:
    """The line on which q_t of ``dataset`` (a `SyntheticDataset`) is shown at time t.

    D = 1: the axis. D >= 2: the line through a(t) c_i and a(t) c_j for the two component
    centres c (mixture means, box centres) farthest apart (gmm2d: (-5,-5) and (5,5); gmm8: two
    opposite modes; checkerboard: the diagonal through four squares' centres), or, with no
    closed-form model, the first axis through the data mean. s = u . x is the position on it.
    The shown s range is the [q, 1 - q] quantile range of u . x over n_ref samples x ~ q_t
    (fixed seed), widened by 10 % on each side, so the line covers the modes at every t and
    grows with the noise.

    Cost: n_ref data samples.
    """
    gen = torch.Generator().manual_seed(0)
    x0 = dataset.sample(n_ref, gen)
    tt = torch.full((n_ref,), float(t), dtype=torch.float64)
    a = float(sde.mean_coeff(tt[:1])[0])
    x, _ = sde.perturb(x0, tt, gen)
    dim = x0.shape[1]
    centres = _mode_centres(dataset.truth)
    split = None
    if dim == 1:
        u, through, what = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), "x axis"
    elif centres is not None and centres.shape[0] >= 2:
        d2 = (centres[:, None] - centres[None]).pow(2).sum(-1)
        i, j = sorted(divmod(int(d2.argmax()), centres.shape[0]))
        u = (centres[j] - centres[i]) / (centres[j] - centres[i]).norm()
        through = a * centres[i]
        split = float(a * 0.5 * (centres[i] + centres[j]) @ u)
        what = (f"line through the centres {_fmt_point(centres[i])} and {_fmt_point(centres[j])}"
                " (scaled by a(t)), s = u.x")
    else:
        u = torch.zeros(dim, dtype=torch.float64)
        u[0] = 1.0
        through = a * x0.double().mean(0)
        what = f"x_1 axis through a(t) x the data mean {_fmt_point(x0.double().mean(0))}"
    origin = through - (through @ u) * u  # the foot of the perpendicular from 0: s = u . x on the line
    proj = x.double() @ u
    lo, hi = (float(v) for v in torch.quantile(proj, torch.tensor([q, 1 - q], dtype=torch.float64)))
    pad = 0.1 * (hi - lo)
    return DensityLine(origin=origin, direction=u, s_lo=lo - pad, s_hi=hi + pad, what=what, split=split)


def _normalise(s: Tensor, log_p: Tensor) -> Tensor:
    """exp(log_p) divided by its trapezoid integral over s (both (n,)), float64."""
    p = (log_p.double() - log_p.double().max()).exp()
    return p / torch.trapezoid(p, s)


def line_log_density(score_fn: ScoreFn, line: DensityLine, t: float, n: int = 2001,
                     dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The density that a score field implies on ``line`` at time t: (s (n,), p (n,)) with
    log p(s) = int_{s_lo}^{s} u . score(x(s'), t) ds' (cumulative trapezoid rule on n points)
    and p normalised to integrate to 1 over [s_lo, s_hi] (trapezoid rule), float64.

    For a gradient field score = grad log q this is q restricted to the line and normalised
    there; a learned score need not be a gradient, and then this is the density of its
    component along the line. Error of the quadrature O(h^2 max|d^2 (u.score)/ds^2| (s_hi - s_lo)),
    h = (s_hi - s_lo) / (n - 1). No derivative is taken.

    Cost: one score evaluation on n points (no gradient), in ``dtype``.
    """
    s, x = line.points(n)
    with torch.no_grad():
        f = (score_fn(x.to(dtype), torch.full((n,), float(t), dtype=dtype)).double() @ line.direction)
    h = s[1:] - s[:-1]
    log_p = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(0.5 * h * (f[1:] + f[:-1]), 0)])
    return s, _normalise(s, log_p)


def mass_below(s: Tensor, p: Tensor, split: float) -> float:
    """int_{s_lo}^{split} p ds by the trapezoid rule on the grid points s <= split (the last
    cell's share left out: an error of at most h p(split), small where split lies in the
    valley between two modes). For gmm2d's slice this is the first mode's weight on the line
    (the data's 0.2 while the modes are apart)."""
    keep = s <= split
    return float(torch.trapezoid(p[keep], s[keep])) if int(keep.sum()) >= 2 else 0.0


def true_line_density(dataset: Any, sde: Any, line: DensityLine, t: float, n: int = 2001) -> tuple[Tensor, Tensor]:
    """The exact q_t on ``line`` (from ``dataset.log_prob``), normalised over the shown range
    like `line_log_density`: (s (n,), p (n,)), float64."""
    s, x = line.points(n)
    return s, _normalise(s, dataset.log_prob(x, torch.full((n,), float(t), dtype=torch.float64), sde))


def overlay_rows(runs: Sequence[SeedRun], band: tuple[float, float] = BAND) -> list[dict[str, Any]]:
    """One CSV row per run: run_dir, seed, dataset, sde, steps, the band's mean and max relative
    score error and the t of the max (`band_summary` of the stored curve), and for mixtures
    the mode weights of each sampler (w_em_k, w_ode_k), their largest deviation from the
    data's weights (dev_em, dev_ode) and the data's weights (w_true_k).

    Raises:
        CauchyRunError: a run's t grid has no point in ``band``.
    """
    rows = []
    for r in runs:
        try:
            mean, mx, t_mx = band_summary(r.t_grid, r.rel_err, band)
        except ValueError as err:
            raise CauchyRunError(f"{str(r.run_dir)!r}: {err}") from None
        row: dict[str, Any] = {"run_dir": str(r.run_dir), "seed": r.seed, "dataset": r.dataset,
                               "sde": r.sde, "steps": r.config.get("steps"),
                               "mean_rel_err": mean, "max_rel_err": mx, "t_at_max": t_mx}
        for sampler, w in r.mode_weights.items():
            row.update({f"w_{sampler}_{k}": v for k, v in enumerate(w)})
            if r.target_mode_weights is not None:
                row[f"dev_{sampler}"] = max(abs(a - b) for a, b in zip(w, r.target_mode_weights))
        if r.target_mode_weights is not None:
            row.update({f"w_true_{k}": v for k, v in enumerate(r.target_mode_weights)})
        rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _label(run: SeedRun, row: dict[str, Any], extra: str) -> str:
    """seed, band mean error, (two modes) the first mode's learned weight per sampler, else
    the largest weight deviation (EM); "MISS" when the run misses one of the issue's targets:
    mean error >= `TARGET_ERROR`, or, for a two-mode mixture (the gmm2d target), a weight off
    by more than `WEIGHT_TOLERANCE` in either sampler."""
    lab = f"seed {run.seed}{extra}: {100 * row['mean_rel_err']:.2f} %"
    w = run.mode_weights
    if run.target_mode_weights is not None and len(run.target_mode_weights) == 2 and w:
        lab += ", w1 " + " / ".join(f"{s.upper()} {v[0]:.3f}" for s, v in w.items())
    elif "dev_em" in row:
        lab += f", max|w - w*| EM {row['dev_em']:.3f}"
    two_modes = run.target_mode_weights is not None and len(run.target_mode_weights) == 2
    devs = [row[k] for k in ("dev_em", "dev_ode") if k in row] if two_modes else []
    if row["mean_rel_err"] >= TARGET_ERROR or any(d > WEIGHT_TOLERANCE for d in devs):
        lab += "  MISS"
    return lab


def log_ratio_tolerance(weights: Sequence[float], tol: float = WEIGHT_TOLERANCE) -> float:
    """The error of log(pi_2 / pi_1) that moves the first of two weights by ``tol``:
    d pi_1 = -pi_1 pi_2 d log(pi_2 / pi_1), so tol / (pi_1 pi_2) (gmm2d: 0.03 / 0.16 = 0.19)."""
    return tol / (weights[0] * weights[1])


def plot_seed_overlay(runs: Sequence[SeedRun], rows: Sequence[dict[str, Any]],
                      densities: Sequence[tuple[float, DensityLine, tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]]],
                      *, band: tuple[float, float] = BAND, title: str = "",
                      log_ratio: Sequence[Tensor] = ()) -> Any:
    """The figure of `seed_overlay` (returned open, not saved): panel (a) the relative score
    error (%) over t, one line per run labelled with its seed, band mean and (gmm2d-like, two
    modes) the learned weight of the first mode per sampler, a dotted 5 % line and the shaded
    band; then one panel per entry of ``densities`` = (t, line, true (s, p), [per run (s, p)]):
    the exact density (black, dashed) and each run's in the run's colour. With ``log_ratio``
    (per run (T, K - 1), `log_ratio_error` on the run's t grid) a panel after (a) shows it over
    t, one line per run and pair (pairs told apart by line style), and for two modes the band
    +- `log_ratio_tolerance` (an error inside it moves the weights by less than 0.03). Every
    run line has gid "run" (so a caller can count them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1 + len(densities) + (1 if log_ratio else 0)
    fig, ax = plt.subplots(1, n, figsize=(5.2 + 3.6 * (n - 1), 4.2), squeeze=False)
    ax = ax[0]
    extras = _run_extras(runs)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for r, row, c, extra in zip(runs, rows, colours, extras):
        (line,) = ax[0].plot(r.t_grid, [100 * e for e in r.rel_err], "o-", ms=2.5, lw=1.2, color=c,
                             label=_label(r, row, extra))
        line.set_gid("run")
    ax[0].axvspan(*band, color="0.9", zorder=0, label=f"band t in [{band[0]:g}, {band[1]:g}]")
    ax[0].axhline(100 * TARGET_ERROR, color="k", ls=":", lw=1, label=f"target {100 * TARGET_ERROR:g} %")
    ax[0].set(xlabel="t", ylabel="relative L2 score error (%)", xlim=(0, 1.0),
              title="(a) q_t-weighted score error, per run")
    # headroom for the legend above the curves
    ax[0].set_ylim(0, 1.9 * 100 * max(max(r.rel_err) for r in runs))
    ax[0].grid(alpha=0.3)
    target = runs[0].target_mode_weights
    head = "seed: mean over band" + (f", mode-1 weight (data {target[0]:g})" if target is not None and len(target) == 2
                                      else "")
    ax[0].legend(fontsize=7, title=head, title_fontsize=7, loc="upper left")
    dens_axes = ax[1:]
    if log_ratio:
        b = ax[1]
        dens_axes = ax[2:]
        styles = ["-", "--", ":"]
        for r, lr, c in zip(runs, log_ratio, colours):
            for k in range(lr.shape[1]):
                (line,) = b.plot(r.t_grid, lr[:, k].numpy(), styles[k % 3], color=c, lw=1.1)
                line.set_gid("run")
        if target is not None and len(target) == 2:
            tol = log_ratio_tolerance(target)
            b.axhspan(-tol, tol, color="0.9", zorder=0, label=f"+-{tol:.2f}: weights within {WEIGHT_TOLERANCE:g}")
            b.legend(fontsize=7, loc="lower left")
        b.axhline(0.0, color="k", lw=0.8)
        b.set(xlabel="t", ylabel="error of log(pi_k+1 / pi_k) implied by s~", xlim=(0, 1.0),
              title="(b) log mass-ratio error between neighbouring modes")
        b.grid(alpha=0.3)
    for a, (t, dl, (s_true, p_true), learned) in zip(dens_axes, densities):
        for (s, p), c in zip(learned, colours):
            (line,) = a.plot(s.numpy(), p.numpy(), color=c, lw=1.1, alpha=0.85)
            line.set_gid("run")
        a.plot(s_true.numpy(), p_true.numpy(), "k--", lw=1.4, label="true q_t")
        a.set(xlabel="s (position on the line)", ylabel="density on the line (normalised)",
              title=f"t = {t:.3g}")
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    if densities:
        title = (title + "\n" if title else "") + (
            f"({'c' if log_ratio else 'b'}) density on the {densities[0][1].what}: true q_t (dashed) vs learned "
            "(exp of the learned score's line integral), normalised on the shown range")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _run_extras(runs: Sequence[SeedRun]) -> list[str]:
    """A label suffix per run: empty when the runs differ only in their seed, else the run
    directory's name (so two settings in one figure stay apart)."""
    def rest(r: SeedRun) -> dict[str, Any]:
        return {k: v for k, v in r.config.items() if k != "seed"}

    same = all(rest(r) == rest(runs[0]) for r in runs)
    seeds = [r.seed for r in runs]
    if same and len(set(seeds)) == len(seeds):
        return ["" for _ in runs]
    return [f" ({r.run_dir.name})" for r in runs]


@dataclass(frozen=True)
class OverlayData:
    """Everything `plot_seed_overlay` draws: the runs, their CSV rows (`overlay_rows`), per
    time (t, line, true (s, p), [per run (s, p)]), and for mixtures of at most `MAX_PAIRS` + 1
    modes each run's `log_ratio_error` on its t grid."""

    runs: list[SeedRun]
    rows: list[dict[str, Any]]
    densities: list[tuple[float, DensityLine, tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]]]
    title: str
    log_ratio: list[Tensor] = field(default_factory=list)  # per run (T, K - 1) on its t grid; [] if not drawn


@dataclass(frozen=True)
class SeedOverlay:
    """What `seed_overlay` wrote: the PNG, the CSV, and the CSV's rows."""

    png: Path
    csv: Path
    rows: list[dict[str, Any]]


def default_times(runs: Sequence[SeedRun], band: tuple[float, float] = BAND) -> tuple[float, float, float]:
    """(t_min, t_peak, 1): the initial condition, the grid time in the band where the runs'
    score error averaged over the runs (those on the first run's grid) is largest, which is
    where a failing run's density differs (gmm2d VE: t ~ 0.7-0.75, where the modes merge), and
    the end the solver reaches. t_peak is 0.5 when the peak is at either end."""
    t_grid = runs[0].t_grid
    inband = [i for i, t in enumerate(t_grid) if band[0] - 1e-9 <= t <= band[1] + 1e-9]
    same = [r for r in runs if r.t_grid == t_grid]
    mean = {i: math.fsum(r.rel_err[i] for r in same) / len(same) for i in inband}
    t_peak = t_grid[max(inband, key=mean.__getitem__)] if inband else 0.5
    if not (runs[0].t_min < t_peak < 1.0):
        t_peak = 0.5
    return (runs[0].t_min, float(t_peak), 1.0)


def collect_overlay(run_dirs: Sequence[str | Path], *, times: Sequence[float] | None = None,
                    model: str = "pinn", n_line: int = 2001, band: tuple[float, float] = BAND) -> OverlayData:
    """The numbers of `seed_overlay` (nothing written): the runs' curves and mode weights read
    from each results.json (`read_cauchy_run`, `overlay_rows`; on a line through two centres
    each row also gets, per time t, slice_w1_t<t> and slice_w1_true_t<t>: the learned and the
    true density's mass below the centres' midpoint, `mass_below`), and the densities at ``times``
    (default `default_times`) from each run's ``model`` loaded by `load_run_model` (the
    evaluated weights: EMA where the run kept one) through `line_log_density` on
    `density_line` with n_line points, next to `true_line_density`; for mixtures of 2 to
    MAX_PAIRS + 1 modes each run's `log_ratio_error` on its t grid, with its largest |.| at
    t_min and over the band in the row (log_ratio_err_t_min, log_ratio_err_max_band).

    Cost: per run, one model load and len(times) score evaluations on n_line points; the data
    sampling of `density_line` once per time.

    Raises:
        CauchyRunError: a directory is not a finished cauchy run, a checkpoint cannot be
            loaded, or the runs mix data sets / SDEs / t_min or repeat a directory.
        ValueError: a time outside [t_min, 1], n_line < 3.
    """
    from scorefpe.data.synthetic import get_dataset
    from scorefpe.experiments.cauchy import load_run_model
    from scorefpe.sde import make_sde

    runs = [read_cauchy_run(d, model) for d in run_dirs]
    check_comparable(runs)
    first = runs[0]
    times = tuple(default_times(runs, band) if times is None else times)
    for t in times:
        if not (first.t_min <= t <= 1.0):
            raise ValueError(f"time {t!r} lies outside [t_min = {first.t_min:g}, 1]")
    if n_line < 3:
        raise ValueError(f"n_line must be >= 3, got {n_line}")
    rows = overlay_rows(runs, band)
    dataset, sde = get_dataset(first.dataset), make_sde(first.sde)
    models = []
    for r in runs:
        try:
            models.append(load_run_model(r.run_dir / model)[0])
        except (OSError, ValueError) as err:
            raise CauchyRunError(f"{str(r.run_dir / model)!r}: {err}") from None
    densities = []
    for t in times:
        dl = density_line(dataset, sde, t)
        densities.append((t, dl, true_line_density(dataset, sde, dl, t, n_line),
                          [line_log_density(m, dl, t, n_line) for m in models]))
    for t, dl, (s_true, p_true), learned in densities:
        if dl.split is None:
            continue
        for row, (s_run, p_run) in zip(rows, learned):
            row[f"slice_w1_t{t:g}"] = mass_below(s_run, p_run, dl.split)
            row[f"slice_w1_true_t{t:g}"] = mass_below(s_true, p_true, dl.split)
    log_ratio = []
    means = getattr(dataset.truth, "means", None) if dataset.has_score else None
    if means is not None and 2 <= means.shape[0] <= MAX_PAIRS + 1:
        from scorefpe.pinn.evaluate import log_ratio_error

        true = dataset.score_fn(sde)
        for r, m, row in zip(runs, models, rows):
            lr = log_ratio_error(m, true, sde, means, torch.tensor(r.t_grid, dtype=torch.float64))
            log_ratio.append(lr)
            inband = [i for i, t in enumerate(r.t_grid) if band[0] - 1e-9 <= t <= band[1] + 1e-9]
            row["log_ratio_err_t_min"] = float(lr[0].abs().max())
            row["log_ratio_err_max_band"] = float(lr[inband].abs().max()) if inband else math.nan
    title = (f"scorefpe cauchy, {first.dataset} {first.sde.upper()}, {model}: {len(runs)} runs "
             f"({first.config.get('steps')} steps)")
    return OverlayData(runs=runs, rows=rows, densities=densities, title=title, log_ratio=log_ratio)


def seed_overlay(run_dirs: Sequence[str | Path], out_png: str | Path, *,
                 times: Sequence[float] | None = None, model: str = "pinn", n_line: int = 2001,
                 band: tuple[float, float] = BAND) -> SeedOverlay:
    """Draw the convergence of several cauchy runs of one data set and SDE (usually one
    setting's seeds) into ``out_png`` (`collect_overlay`, `plot_seed_overlay`) and write the
    numbers it shows to the CSV beside it (same name, .csv; `overlay_rows`), both atomically,
    after everything is computed (bad input writes nothing; the folder of out_png is made then
    if missing).

    Cost: that of `collect_overlay` and one figure.

    Raises:
        CauchyRunError, ValueError: from `collect_overlay` (nothing written).
    """
    data = collect_overlay(run_dirs, times=times, model=model, n_line=n_line, band=band)
    fig = plot_seed_overlay(data.runs, data.rows, data.densities, band=band, title=data.title,
                            log_ratio=data.log_ratio)
    out_png = Path(out_png)
    out_csv = out_png.with_suffix(".csv")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_csv, _csv_text(data.rows))
    save_figure(fig, out_png)
    return SeedOverlay(png=out_png, csv=out_csv, rows=data.rows)

"""Synthetic benchmark: train MLP score models with DSM or DSM + FP-Diffusion's regulariser on
the low-dimensional data sets (gmm1d, gmm2d, gmm8, checkerboard, swissroll) and measure them
against the ground truth.

Training (FP-Diffusion App. D.1): batch 500, Adam lr 1e-3, t ~ U[t_min, T] with t_min = 1e-3,
loss L_DSM + R_FP with R_FP = alpha / D^m ||omega(t) eps[s]||^m + beta |L[s]| (their eq. 19,
`scorefpe.penalties.fp_diffusion_regulariser`, estimated residual), fresh samples every step,
EMA of the weights; the generic loop `scorefpe.training.train` writes config.json,
checkpoint.pt and metrics.jsonl. FP-Diffusion trained 0.1M iterations; the CPU default here is
far smaller (see `SyntheticRunConfig.steps`).

Evaluation (`evaluate_score`), all on a model's score s(x, t) and, where it exists, the exact
perturbed density q_t of the data set:
    NLL        -E log p_{t_min}(x) by the probability-flow ODE (exact divergence), on held-out
               x ~ q_{t_min} (data perturbed to t_min: the density the ODE from t_min defines);
    gap        E[log q_{t_min}(x) - log p_{t_min}(x)] on the same points: an unbiased estimate of
               KL(q_{t_min} || p_{t_min}) >= 0, with its standard error;
    KL, TV     between p and q normalised on a grid (their mass inside the grid box);
    curl MSE   E_{t ~ U[t_min, T]} E_{x ~ q_t} 1/2 ||J - J^T||_F^2, by the trapezoid in log t
               on log-spaced grids of 10, 20, 40, 80 times (the grid-convergence check; the
               value reported is the finest), with its Monte Carlo standard error; the curve
               over t on the finest grid. (Before issue 16: a trapezoid over 10 uniform times,
               in which the t = t_min node carried ~all of the value; kept as curl_mse_uniform10
               for comparison with older pages only.)
    r_FP       E_{t ~ U[t_min, T]} of 1/D E_{x ~ q_t} ||eps[s]||^2 (exact residual), same
               quadrature on a log grid of n_t times;
    r_DSM(t)   curve (FP-Diffusion's unsquared form) and its time mean likewise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from scorefpe._util import parse_choice
from scorefpe.data.synthetic import DATASETS, SyntheticDataset, get_dataset
from scorefpe.metrics.conservativity import (curl_mse_convergence, curl_mse_curve, time_average,
                                             uniform_time_mean)
from scorefpe.sampling.likelihood import probability_flow_likelihood
from scorefpe.sampling.samplers import check_ode_options
from scorefpe.models import MLPConfig, MLPScoreNet
from scorefpe.penalties import Omega, Penalty, PenaltyConfig
from scorefpe.residuals import (Curve, Spacing, dsm_residual_curve, fp_residual_curve, log_t_grid,
                                time_grid)
from scorefpe.sde import SDE, SDES, VEVariance, make_sde
from scorefpe.training import (DSMWeighting, NonFiniteLossError, SampledBatches, TrainConfig,
                               dsm_objective, load_checkpoint, train)
from scorefpe.training.checkpoint import atomic_write_json

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "DIVERGED_NAME",
    "EvalConfig",
    "GRID_BOXES",
    "PENALTIES",
    "SyntheticRunConfig",
    "diverged_record",
    "evaluate_score",
    "heldout_likelihood",
    "load_synthetic_run",
    "train_synthetic_run",
]

PENALTIES = ("none", "fpd")

# Square evaluation boxes [lo, hi]^D holding essentially all of q_{t_min}'s mass.
GRID_BOXES: dict[str, tuple[float, float]] = {
    "gmm1d": (-1.5, 1.5),
    "gmm2d": (-9.5, 9.5),
    "gmm8": (-1.6, 1.6),
    "checkerboard": (-4.5, 4.5),
    "swissroll": (-9.0, 9.0),
}

TIMING_NAME = "timing.json"
# Written instead of eval.json when a training diverged: the draws are seeded, so a rerun
# diverges at the same step; the benchmark reports the run and leaves it out of the means.
DIVERGED_NAME = "diverged.json"


def _pos_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _nonneg(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class SyntheticRunConfig:
    """One training run. penalty 'none' (DSM) or 'fpd' (DSM + R_FP with alpha, beta, omega, m).

    steps: optimizer steps (FP-Diffusion: 1e5; a CPU default of 1500). hidden/depth: MLP sizes.
    dsm_weighting: lambda(t) of the DSM term, 'sigma2' (||std s + z||^2, the default) or 'g2half'
        (FP-Diffusion's 1/2 g(t)^2 ||s - grad log q_0t||^2, their Sec. 5); see `DSMWeighting`.
    ve_variance: VE marginal variance, 'exact' sigma^2 - sigma_min^2 (default) or 'song' sigma^2
        (the convention of the code FP-Diffusion App. D.1 builds on); see `VEVariance`.
    """

    dataset: str = "gmm8"
    sde: str = "ve"
    penalty: str = "none"
    alpha: float = 1e-3
    beta: float = 0.0
    omega: str = "one"
    m: int = 1
    steps: int = 1500
    batch_size: int = 500
    lr: float = 1e-3
    t_min: float = 1e-3
    hidden: int = 128
    depth: int = 3
    seed: int = 0
    ema_decay: float = 0.999
    log_every: int = 50
    dsm_weighting: str = "sigma2"
    ve_variance: str = "exact"

    def __post_init__(self) -> None:
        parse_choice(DSMWeighting, self.dsm_weighting, "DSM weighting")
        parse_choice(VEVariance, self.ve_variance, "VE variance convention")
        if self.ve_variance != "exact" and self.sde != "ve":
            raise ValueError(f"ve_variance applies to the VE SDE only, got sde {self.sde!r} with "
                             f"ve_variance {self.ve_variance!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; choose one of {sorted(DATASETS)}")
        if self.sde not in SDES:
            raise ValueError(f"unknown SDE {self.sde!r}; choose one of {sorted(SDES)}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; choose one of {list(PENALTIES)}")
        parse_choice(Omega, self.omega, "omega")
        for name in ("alpha", "beta"):
            _nonneg(name, getattr(self, name))
        for name in ("m", "steps", "batch_size", "hidden", "depth", "log_every"):
            _pos_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive and finite, got {self.lr!r}")
        if not (isinstance(self.t_min, (int, float)) and 0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min!r}")
        if not (0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")

    @property
    def label(self) -> str:
        """'DSM' or 'FP a=<alpha>' (with beta when non-zero)."""
        if self.penalty == "none":
            return "DSM"
        lab = f"FP a={self.alpha:g}"
        return lab + (f" b={self.beta:g}" if self.beta else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(cfg: SyntheticRunConfig) -> tuple[MLPScoreNet, SDE, SyntheticDataset]:
    """The untrained MLP score model (output divided by std(t)), its SDE and data set."""
    ds = get_dataset(cfg.dataset)
    sde = make_sde(cfg.sde, **({"variance": cfg.ve_variance} if cfg.sde == "ve" else {}))
    model = MLPScoreNet(MLPConfig(dim=ds.dim, hidden=cfg.hidden, depth=cfg.depth), sde,
                        seed=cfg.seed)
    return model, sde, ds


def train_synthetic_run(
    cfg: SyntheticRunConfig, run_dir: str | Path, *, progress: bool = False, resume: bool = False,
    checkpoint_every: int = 250, max_steps: int | None = None, device: str = "cpu",
) -> dict[str, Any]:
    """Train one model into ``run_dir`` (config.json, checkpoint.pt, metrics.jsonl, timing.json).

    A checkpoint is written every ``checkpoint_every`` steps (0: at the end only) and at the
    end, so a killed run continues with ``resume`` and reproduces the uninterrupted one bit for
    bit; ``max_steps`` stops early (checkpointed; timing.json only when all cfg.steps are done).
    ``device``: where to train (a `scorefpe.training.config.resolve_device` spelling).

    Returns the timing record {"seconds", "steps", "steps_per_s", "last_terms"}.
    Cost per step: DSM about 3 F on the batch; with 'fpd' the estimated residual adds 3 F for
    d_t s, a JVP and a double backward (about 10x the DSM step measured on CPU).

    Raises:
        ValueError: as `scorefpe.training.train` (e.g. run_dir already holds a checkpoint).
        scorefpe.training.NonFiniteLossError: the loss diverged.
    """
    model, sde, ds = build_model(cfg)
    if cfg.penalty == "fpd":
        pcfg = PenaltyConfig(penalty=Penalty.FPD, lam=1.0, t_min=cfg.t_min, alpha=cfg.alpha,
                             beta=cfg.beta, omega=cfg.omega, m=cfg.m)
    else:
        pcfg = PenaltyConfig(penalty=Penalty.NONE, lam=0.0, t_min=cfg.t_min)
    data = SampledBatches(lambda n, g: ds.sample(n, g).float(), cfg.batch_size,
                          steps_per_epoch=cfg.steps, seed=cfg.seed)
    tcfg = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, epochs=1, ema_decay=cfg.ema_decay,
                       seed=cfg.seed, device=device, checkpoint_every=checkpoint_every,
                       log_every=cfg.log_every, max_steps=max_steps)
    t0 = time.perf_counter()
    res = train(model, dsm_objective(sde, pcfg, cfg.dsm_weighting), data, tcfg, run_dir, resume=resume,
                run_config={"synthetic": cfg.to_dict()}, progress=progress)
    sec = time.perf_counter() - t0
    if res.step < cfg.steps:
        return {"seconds": sec, "steps": res.step, "steps_per_s": None,
                "last_terms": res.last_terms, "threads": torch.get_num_threads(), "stopped": True}
    timing = {"seconds": sec, "steps": res.step, "steps_per_s": res.step / sec if sec > 0 else None,
              "last_terms": res.last_terms, "threads": torch.get_num_threads()}
    atomic_write_json(Path(run_dir) / TIMING_NAME, timing)
    return timing


def load_synthetic_run(run_dir: str | Path, *, ema: bool = True) -> tuple[MLPScoreNet, SyntheticRunConfig]:
    """The trained model of a run directory (EMA weights by default, eval mode) and its config.

    Raises:
        ValueError: not a synthetic run directory (no config.json with a 'synthetic' entry, or an
            unreadable checkpoint).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no config.json")
    from scorefpe._util import read_json

    conf = read_json(cfg_path, "config.json")
    if not isinstance(conf, dict) or "synthetic" not in conf:
        raise ValueError(f"{run_dir} is not a synthetic run (config.json has no 'synthetic' entry)")
    try:
        cfg = SyntheticRunConfig(**conf["synthetic"])
    except TypeError as err:
        raise ValueError(f"{cfg_path}: not the settings of a synthetic run ({err})") from None
    try:
        state = load_checkpoint(run_dir / "checkpoint.pt")
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    model, _, _ = build_model(cfg)
    model.load_state_dict(state["ema"] if ema else state["model"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg


# --------------------------------------------------------------------------------------------
# Evaluation against the ground truth.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation. n_test held-out points for the NLL; grid points per axis for
    KL/TV (grid^D points); n_t log-spaced times in [t_min, T] x n_points points for the r_FP
    and r_DSM curves; curl_grids: sizes of the log-spaced t grids of the curl MSE's
    convergence check (the largest gives the reported value and curve); ODE tolerances; seed
    of every draw (the same points for every model)."""

    n_test: int = 500
    grid: int = 48
    n_t: int = 40
    n_points: int = 200
    curl_grids: tuple[int, ...] = (10, 20, 40, 80)
    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "RK45"
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("n_test", "n_t", "n_points"):
            _pos_int(name, getattr(self, name))
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 4:
            raise ValueError(f"grid must be an integer >= 4, got {self.grid!r}")
        if self.n_t < 2 or self.n_points < 2:
            raise ValueError(f"n_t and n_points must be >= 2, got {self.n_t}, {self.n_points}")
        if not self.curl_grids or any(isinstance(n, bool) or not isinstance(n, int) or n < 2
                                      for n in self.curl_grids):
            raise ValueError(f"curl_grids must be grid sizes >= 2, got {self.curl_grids!r}")
        check_ode_options(self.rtol, self.atol, self.method)


def grid_points(name: str, dim: int, n: int) -> tuple[Tensor, float, Tensor]:
    """Cell centres of an n^dim grid over GRID_BOXES[name] (float64), the cell volume, and
    the 1-D axis (n,)."""
    lo, hi = GRID_BOXES[name]
    h = (hi - lo) / n
    axis = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    if dim == 1:
        pts = axis[:, None]
    else:
        xx, yy = torch.meshgrid(axis, axis, indexing="xy")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    return pts, h**dim, axis


def _grid_divergences(log_p: Tensor, log_q: Tensor, cell: float) -> dict[str, float]:
    # Both densities renormalised to their mass inside the box (reported), then compared cellwise.
    lp = log_p + math.log(cell)
    lq = log_q + math.log(cell)
    mass_p, mass_q = float(torch.logsumexp(lp, 0).exp()), float(torch.logsumexp(lq, 0).exp())
    lp = lp - torch.logsumexp(lp, 0)
    lq = lq - torch.logsumexp(lq, 0)
    pq = lq.exp()
    kl = float((pq * (lq - lp)).sum())
    tv = float(0.5 * (pq - lp.exp()).abs().sum())
    return {"kl": kl, "tv": tv, "grid_mass_model": mass_p, "grid_mass_true": mass_q}


def heldout_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    ds: SyntheticDataset,
    *,
    t_min: float,
    n: int,
    dtype: torch.dtype,
    generator: torch.Generator,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    n_probes: int | None = None,
    probe: str = "rademacher",
) -> dict[str, Any]:
    """NLL of held-out points by the probability-flow ODE, and its gap to the true NLL.

    Draws x0 ~ p_data (n points) and x ~ q_{0t_min}(. | x0) (data perturbed to t_min, the density
    the ODE started at t_min defines), both from ``generator``, and solves the probability-flow
    ODE of ``score_fn`` (evaluated in ``dtype``) from t_min to T for log p_{t_min}(x).

    Returns a JSON-serialisable dict:
        nll, nll_se   -mean log p_{t_min}(x) and its standard error sd / sqrt(n);
        true_nll      -mean log q_{t_min}(x) under the data set's closed form (None without one);
        gap, gap_se   mean of log q_{t_min}(x) - log p_{t_min}(x) and its standard error: an
                      unbiased estimate of KL(q_{t_min} || p_{t_min}) (None without a closed form);
        nfe, seconds  right-hand-side evaluations of the ODE solve and its wall time.
    Cost: one ODE solve of n points, nfe divergences (D JVPs each with the exact divergence,
    ``n_probes`` VJPs with Hutchinson, ``probe`` 'rademacher' or 'gaussian'). Error: the solver's (rtol, atol) per step plus, for the
    gap, log q_T - log prior at x(T), i.e. KL(q_T || prior) on average.

    Raises:
        ValueError: bad n, tolerance, method or n_probes (from the likelihood solver).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (for a standard error), got {n!r}")
    t0 = time.perf_counter()
    x0 = ds.sample(n, generator)
    tt = torch.full((n,), t_min, dtype=torch.float64)
    x, _ = sde.perturb(x0, tt, generator)
    res = probability_flow_likelihood(
        score_fn, sde, x.to(dtype), t_min=t_min, rtol=rtol, atol=atol, method=method,
        divergence="exact" if n_probes is None else "hutchinson", n_probes=n_probes or 1,
        probe=probe, generator=generator)
    out: dict[str, Any] = {
        "nll": float(-res.log_prob.mean()),
        "nll_se": float(res.log_prob.std() / math.sqrt(n)),
        "true_nll": None, "gap": None, "gap_se": None,
        "nfe": res.nfe,
    }
    if ds.has_score:
        log_q = ds.log_prob(x, tt, sde)
        diff = log_q - res.log_prob
        out.update(true_nll=float(-log_q.mean()), gap=float(diff.mean()),
                   gap_se=float(diff.std() / math.sqrt(n)))
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate_score(
    score_fn: ScoreFn,
    sde: SDE,
    ds: SyntheticDataset,
    *,
    t_min: float,
    dtype: torch.dtype,
    ecfg: EvalConfig = EvalConfig(),
    ode: bool = True,
) -> dict[str, Any]:
    """All the benchmark's numbers and curves for one score function (see module docstring).

    score_fn is evaluated in ``dtype`` (float32 for the networks, float64 for the closed form).
    Returns a JSON-serialisable dict: nll, nll_se, true_nll, gap, gap_se (None without a closed
    form), kl, tv, grid masses, grid log-density (list); curl_mse and curl_mse_se (mean over
    t ~ U[t_min, T] on the finest of ecfg.curl_grids, log-t trapezoid), curl_mse_by_grid
    {n_t: {value, se}} (the grid-convergence check), curl_mse_uniform10 (the pre-issue-16
    10-point uniform trapezoid, for comparison only); r_fp, r_fp_se, r_dsm, r_dsm_se (same
    time mean on n_t log-spaced times); curves {curl, r_fp, r_dsm: {t, mean, se}}; nfe of the
    NLL and grid solves, seconds. 1-D sets: the curl entries are None.
    Cost: two ODE solves (n_test and grid^D points, each nfe x D JVPs), n_t exact residuals and
    sum(curl_grids) + 10 Jacobians on n_points each. ``ode=False`` skips the ODE solves (NLL,
    gap, KL, TV are None).
    """
    t0 = time.perf_counter()
    kw = dict(t_min=t_min, rtol=ecfg.rtol, atol=ecfg.atol, method=ecfg.method)
    if not ode:
        out = {k: None for k in ("nll", "nll_se", "nfe_test", "nfe_grid", "grid_log_p", "true_nll",
                                 "gap", "gap_se", "kl", "tv", "grid_log_q")}
        out["grid_axis"] = grid_points(ds.name, ds.dim, ecfg.grid)[2].tolist()
        return _curves(out, score_fn, sde, ds, t_min, dtype, ecfg, t0)
    held = heldout_likelihood(score_fn, sde, ds, n=ecfg.n_test, dtype=dtype,
                              generator=torch.Generator().manual_seed(ecfg.seed), **kw)
    out: dict[str, Any] = {k: held[k] for k in ("nll", "nll_se", "true_nll", "gap", "gap_se")}
    out["nfe_test"] = held["nfe"]
    pts, cell, axis = grid_points(ds.name, ds.dim, ecfg.grid)
    glik = probability_flow_likelihood(score_fn, sde, pts.to(dtype), **kw)
    out["nfe_grid"] = glik.nfe
    out["grid_axis"] = axis.tolist()
    out["grid_log_p"] = glik.log_prob.tolist()
    if ds.has_score:
        gq = ds.log_prob(pts, torch.full((pts.shape[0],), t_min, dtype=torch.float64), sde)
        out["grid_log_q"] = gq.tolist()
        out.update(_grid_divergences(glik.log_prob, gq, cell))
    else:
        out.update(kl=None, tv=None, grid_log_q=None)
    return _curves(out, score_fn, sde, ds, t_min, dtype, ecfg, t0)


def _curves(out: dict[str, Any], score_fn: ScoreFn, sde: SDE, ds: SyntheticDataset, t_min: float,
            dtype: torch.dtype, ecfg: EvalConfig, t0: float) -> dict[str, Any]:
    t_grid = log_t_grid(t_min, sde.T, ecfg.n_t)
    sample = lambda n, g: ds.sample(n, g).to(dtype)  # noqa: E731
    curves: dict[str, Curve] = {}
    if ds.dim >= 2:
        by_grid, curves["curl"] = curl_mse_convergence(
            score_fn, sde, sample, t_min, n_ts=ecfg.curl_grids, n_points=ecfg.n_points,
            dtype=dtype, seed=ecfg.seed + 1)
        finest = by_grid[max(by_grid)]
        out["curl_mse"], out["curl_mse_se"] = finest.value, finest.se
        out["curl_mse_by_grid"] = {str(n): {"value": m.value, "se": m.se} for n, m in by_grid.items()}
        old = curl_mse_curve(score_fn, sde, sample, time_grid(t_min, sde.T, 10, Spacing.UNIFORM).to(dtype),
                             n_points=ecfg.n_points,
                             generator=torch.Generator().manual_seed(ecfg.seed + 1))
        out["curl_mse_uniform10"] = time_average(old)
    else:
        out.update(curl_mse=None, curl_mse_se=None, curl_mse_by_grid=None, curl_mse_uniform10=None)
    curves["r_fp"] = fp_residual_curve(score_fn, sde, sample, t_grid.to(dtype),
                                       n_points=ecfg.n_points, method="exact",
                                       generator=torch.Generator().manual_seed(ecfg.seed + 2))
    curves["r_dsm"] = dsm_residual_curve(score_fn, sde, sample, t_grid.to(dtype),
                                         n_points=ecfg.n_points,
                                         generator=torch.Generator().manual_seed(ecfg.seed + 3))
    for k in ("r_fp", "r_dsm"):
        c = curves[k]
        curves[k] = Curve(c.name, t_grid, c.mean, c.se)
        tm = uniform_time_mean(curves[k])
        out[k], out[k + "_se"] = tm.value, tm.se
    out["curves"] = {
        k: {"t": c.t.double().tolist(), "mean": c.mean.double().tolist(), "se": c.se.double().tolist()}
        for k, c in curves.items()
    }
    out["seconds"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------------------------
# The benchmark: every data set x (DSM, FP alphas) x seeds, plus the closed-form score.
# --------------------------------------------------------------------------------------------

EVAL_NAME = "eval.json"

# The exact checkerboard score at t_min = 1e-3 is ~ distance / v(t_min) ~ 1e5 outside the squares:
# the probability-flow ODE from grid points there is too stiff for an explicit solver in the
# benchmark's time (a 32 x 32 grid ran > 5 minutes without finishing). Its exact density needs no
# ODE; only the ODE check of the closed-form row is skipped.
CLOSED_FORM_NO_ODE = ("checkerboard",)


@dataclass(frozen=True)
class BenchmarkConfig:
    """What `run_benchmark` trains and evaluates. The default is sized for a shared 2-core CPU
    (about 15 minutes when the two cores are free; see docs/results/synthetic.md); FP-Diffusion
    trained 1e5 steps per model."""

    datasets: tuple[str, ...] = ("gmm1d", "gmm2d", "gmm8", "checkerboard", "swissroll")
    sde: str = "ve"
    alphas: tuple[float, ...] = (1e-3, 1e-2)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 600
    hidden: int = 128
    depth: int = 3
    t_min: float = 1e-3
    dsm_weighting: str = "sigma2"
    ve_variance: str = "exact"
    eval: EvalConfig = EvalConfig(n_test=400, grid=32, n_t=40, n_points=200)
    # Evaluate the raw weights: an EMA with decay 0.999 still holds 0.999^1000 = 37 % of the
    # initial weights after 1000 steps, so it only helps runs much longer than these.
    use_ema: bool = False

    def __post_init__(self) -> None:
        for d in self.datasets:
            if d not in DATASETS:
                raise ValueError(f"unknown data set {d!r}; choose one of {sorted(DATASETS)}")
        if not self.datasets or not self.seeds:
            raise ValueError("need at least one data set and one seed")
        # Validate the rest through the run config.
        for a in self.alphas:
            self.run_config(self.datasets[0], "fpd", a, self.seeds[0])

    def run_config(self, dataset: str, penalty: str, alpha: float, seed: int) -> SyntheticRunConfig:
        return SyntheticRunConfig(dataset=dataset, sde=self.sde, penalty=penalty, alpha=alpha,
                                  steps=self.steps, hidden=self.hidden, depth=self.depth,
                                  t_min=self.t_min, seed=seed, dsm_weighting=self.dsm_weighting,
                                  ve_variance=self.ve_variance)

    def runs(self) -> list[tuple[str, SyntheticRunConfig]]:
        """(relative run directory, config) of every model to train, in order."""
        out = []
        for d in self.datasets:
            for seed in self.seeds:
                out.append((f"{d}/dsm_s{seed}", self.run_config(d, "none", 0.0, seed)))
                for a in self.alphas:
                    out.append((f"{d}/fp{a:g}_s{seed}", self.run_config(d, "fpd", a, seed)))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["datasets"], d["alphas"], d["seeds"] = list(self.datasets), list(self.alphas), list(self.seeds)
        return d


def run_benchmark(
    bcfg: BenchmarkConfig, out_dir: str | Path, *, progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate every run of ``bcfg`` under out_dir/runs/, and the closed-form score
    of each data set that has one under out_dir/runs/<dataset>/closed_form/. A run whose
    eval.json exists is reused (so an interrupted benchmark resumes; delete to redo).

    Returns one record per model: {dataset, model, seed, train: timing or None, eval: ...}; a
    run whose training diverged (NonFiniteLossError) gets a `diverged_record` (eval None),
    written as diverged.json and reused on the next call, and the benchmark goes on.

    Raises:
        ValueError: out_dir holds a finished run whose settings differ from ``bcfg``'s.
    ``log`` receives one line per finished model (the CLI prints it).
    """
    from scorefpe._util import read_json

    out_dir = Path(out_dir)
    runs_dir = out_dir / "runs"
    atomic_write_json(out_dir / "benchmark_config.json", bcfg.to_dict())
    records = []
    ecfg = bcfg.eval
    for rel, cfg in bcfg.runs():
        run_dir = runs_dir / rel
        ev_path = run_dir / EVAL_NAME
        div_path = run_dir / DIVERGED_NAME
        if div_path.is_file() and not ev_path.is_file():
            rec = read_json(div_path, DIVERGED_NAME)
            if not isinstance(rec, dict) or rec.get("config") != cfg.to_dict():
                raise ValueError(
                    f"{run_dir} holds a run with other settings than this benchmark's; "
                    f"choose another output directory or delete it")
        elif ev_path.is_file():
            rec = read_json(ev_path, "eval.json")
            if not isinstance(rec, dict) or rec.get("config") != cfg.to_dict():
                raise ValueError(
                    f"{run_dir} holds a run with other settings than this benchmark's; "
                    f"choose another output directory or delete it")
        else:
            if (run_dir / "checkpoint.pt").is_file() and (run_dir / TIMING_NAME).is_file():
                timing = read_json(run_dir / TIMING_NAME, "timing.json")
            else:
                if run_dir.exists():  # a run interrupted mid-training: start it again
                    import shutil

                    shutil.rmtree(run_dir)
                try:
                    timing = train_synthetic_run(cfg, run_dir, progress=progress)
                except NonFiniteLossError as err:
                    rec = diverged_record(cfg, err)
                    atomic_write_json(div_path, rec)
                    records.append(rec)
                    if log:
                        _log_record(log, rec)
                    continue
            model, _ = load_synthetic_run(run_dir, ema=bcfg.use_ema)
            _, sde, ds = build_model(cfg)
            ev = evaluate_score(model, sde, ds, t_min=cfg.t_min, dtype=torch.float32, ecfg=ecfg)
            rec = {"dataset": cfg.dataset, "model": cfg.label, "seed": cfg.seed,
                   "config": cfg.to_dict(), "weights": "ema" if bcfg.use_ema else "raw",
                   "train": timing, "eval": ev}
            atomic_write_json(ev_path, rec)
        records.append(rec)
        if log:
            _log_record(log, rec)
    for d in bcfg.datasets:
        ds = get_dataset(d)
        if not ds.has_score:
            continue
        ev_path = runs_dir / d / "closed_form" / EVAL_NAME
        if ev_path.is_file():
            rec = read_json(ev_path, "eval.json")
        else:
            sde = make_sde(bcfg.sde, **({"variance": bcfg.ve_variance} if bcfg.sde == "ve" else {}))
            ev = evaluate_score(ds.score_fn(sde), sde, ds, t_min=bcfg.t_min, dtype=torch.float64,
                                ecfg=ecfg, ode=d not in CLOSED_FORM_NO_ODE)
            rec = {"dataset": d, "model": "closed form", "seed": None, "config": None,
                   "train": None, "eval": ev}
            atomic_write_json(ev_path, rec)
        records.append(rec)
        if log:
            _log_record(log, rec)
    return records


def diverged_record(cfg: SyntheticRunConfig, err: NonFiniteLossError) -> dict[str, Any]:
    """The benchmark's record of a run whose training diverged: no evaluation (``eval`` None),
    ``diverged`` = {step, term, value, checkpoint_step} of the NonFiniteLossError."""
    return {"dataset": cfg.dataset, "model": cfg.label, "seed": cfg.seed, "config": cfg.to_dict(),
            "train": None, "eval": None,
            "diverged": {"step": err.step, "term": err.term, "value": repr(err.value),
                         "checkpoint_step": err.checkpoint_step, "steps": cfg.steps}}


def _log_record(log: Callable[[str], None], rec: dict[str, Any]) -> None:
    if rec.get("diverged"):
        dv = rec["diverged"]
        log(f"{rec['dataset']:12s} {rec['model']:11s} seed={rec['seed']}: DIVERGED at step "
            f"{dv['step']} of {dv['steps']} ({dv['term']} = {dv['value']}); left out of the table")
        return
    ev = rec["eval"]
    tr = rec["train"]
    gap = "n/a" if ev["gap"] is None else f"{ev['gap']:.3f}"
    curl = "n/a" if ev["curl_mse"] is None else f"{ev['curl_mse']:.3g}"
    tt = "" if tr is None else f" train {tr['seconds']:.0f}s ({tr['steps_per_s']:.1f} steps/s)"
    nll = "n/a" if ev["nll"] is None else f"{ev['nll']:.3f}"
    log(f"{rec['dataset']:12s} {rec['model']:11s} seed={rec['seed']}: NLL {nll} "
        f"gap {gap} curl {curl} r_FP {ev['r_fp']:.3g}{tt}")

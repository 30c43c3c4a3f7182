"""One Cauchy-problem experiment end to end: build, train (checkpointed, resumable), evaluate,
plot and write the run directory that `scorefpe cauchy` reports on.

Layout of ``out_dir`` (see `run_cauchy`): one sub-folder per trained model (``pinn``, and
``dsm`` for the baseline) holding config.json, checkpoint.pt and metrics.jsonl (one JSON line
per optimiser step, rewritten whole from the checkpoint's history, so consistent after
resumes); results.json and the figures score_error.png, samples.png (and density.png) at the top.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from scorefpe._util import atomic_write_text, save_figure
from scorefpe.models.mlp import MLPConfig
from scorefpe.pinn.evaluate import EvalResult, density_grid, evaluate_model
from scorefpe.pinn.model import PreconditionedScore, data_scale, local_scale
from scorefpe.pinn.solver import (
    CauchyConfig,
    Curriculum,
    ICBalancer,
    Objective,
    Preconditioning,
    ResidualPool,
    TrainState,
    evals_per_step,
    make_loss,
    train,
)
from scorefpe.sde import SDE
from scorefpe.training.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from scorefpe.training.ema import EMA

Tensor = torch.Tensor

N_SCALE_SAMPLES = 20000  # data samples behind data_scale / local_scale (their MC error ~ 1/sqrt(N))

# Options added after runs existed: the value that reproduces a checkpoint written before the
# option did (the first wrapper; half-uniform mixed collocation; t ~ U[t_min, T]), so such runs
# resume when given those values instead of being refused for a missing key.
_BEFORE_OPTION = {"precond": "global", "uniform_fraction": 0.5, "t_sampling": "uniform", "ema": 0.0,
                  "causal_eps": 0.0, "causal_bins": 8, "rad_every": 0, "rad_pool": 4096, "rad_k": 1.0,
                  "rad_c": 1.0, "balance_every": 0, "balance_decay": 0.9, "rad_ic": False,
                  "curriculum": 0.0, "lr_schedule": "cosine", "time_method": None}

__all__ = [
    "CauchyEvalConfig",
    "CauchyResult",
    "ResumeMismatchError",
    "TrainRun",
    "baseline_config",
    "build_model",
    "load_run_model",
    "plot_density",
    "plot_samples",
    "plot_score_error",
    "run_cauchy",
    "train_run",
]


class ResumeMismatchError(ValueError):
    """A run cannot be resumed: its configuration differs from its checkpoint's (other than in
    ``steps``), or the checkpoint cannot be read (corrupt, truncated, not a scorefpe file)."""


def build_model(cfg: CauchyConfig, dataset: Any, sde: SDE, *, n_scale: int = N_SCALE_SAMPLES) -> PreconditionedScore:
    """The `PreconditionedScore` of ``cfg`` (MLP of cfg.hidden x cfg.depth, weights seeded by
    cfg.seed) for ``dataset`` (a synthetic set with ``sample`` and, for precond='local',
    ``score_fn``).

    Its scales come from ``n_scale`` data samples x0 drawn with seed cfg.seed + 1000:
    sigma_data = `data_scale`(x0), and for precond='local' sigma_local = `local_scale` of the
    exact initial score s(x, t_min) at x ~ q_{t_min} (the initial-condition points'
    distribution). Both are Monte-Carlo estimates with relative error ~ 1/sqrt(n_scale).

    Cost: n_scale samples and one exact-score evaluation on them.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1000)
    x0 = dataset.sample(n_scale, gen)
    sigma_local = None
    if Preconditioning(cfg.precond) is Preconditioning.LOCAL:
        t = torch.full((x0.shape[0],), cfg.t_min, dtype=x0.dtype)
        x, _ = sde.perturb(x0, t, gen)
        sigma_local = local_scale(dataset.score_fn(sde)(x, t), sde, cfg.t_min)
    return PreconditionedScore(MLPConfig(dim=dataset.dim, hidden=cfg.hidden, depth=cfg.depth), sde,
                               data_scale(x0), sigma_local=sigma_local, t_min=cfg.t_min, seed=cfg.seed)


def baseline_config(cfg: CauchyConfig, dim: int) -> CauchyConfig:
    """The DSM baseline of ``cfg``: same network, schedule and seed, objective 'dsm' with a
    batch of `evals_per_step`(cfg, dim), so both spend the same model evaluations per step."""
    return replace(cfg, objective=Objective.DSM.value, init="exact", dsm_batch=evals_per_step(cfg, dim))


@dataclass
class TrainRun:
    """One trained (or partly trained) model and its timing.

    train_seconds: wall time over all sessions of the run (resumes included); steps: step
    reached; steps_per_s: this session's rate (None if it ran no step); final: the last
    metrics row ({} before the first step). After `run_cauchy` evaluates it, eval, eval_seconds
    and samples ({sampler name: (n, D) samples}) are set.
    """

    model: PreconditionedScore
    train_seconds: float
    steps: int
    steps_per_s: float | None
    final: dict[str, float]
    eval: EvalResult | None = None
    eval_seconds: float | None = None
    samples: dict[str, Tensor] = field(default_factory=dict)
    eval_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready numbers (results.json's entry of this run): no model, no samples."""
        out: dict[str, Any] = {"train_seconds": self.train_seconds, "steps": self.steps,
                               "steps_per_s": self.steps_per_s, "final": self.final}
        if self.eval is not None:
            out["eval"] = self.eval.to_dict()
            out["eval_seconds"] = self.eval_seconds
        if self.eval_error is not None:
            out["eval_error"] = self.eval_error
        return out


def train_run(
    cfg: CauchyConfig,
    dataset: Any,
    sde: SDE,
    run_dir: str | Path,
    *,
    resume: bool = False,
    checkpoint_every: int = 250,
    stop_after: int | None = None,
    progress: bool = False,
    label: str | None = None,
) -> TrainRun:
    """Train the model of ``cfg`` (`build_model`, Adam, `train`) into ``run_dir``.

    Writes run_dir/config.json, run_dir/checkpoint.pt (model, optimiser and generator state,
    step, loss history, seconds; every ``checkpoint_every`` steps, at cfg.steps and at
    ``stop_after``) and run_dir/metrics.jsonl (the whole history), all atomically. With
    ``resume`` and a checkpoint in run_dir, continues from it: the result equals that of an
    uninterrupted run (the lr schedule is a function of the step and cfg.steps, so cfg.steps
    may grow). ``stop_after`` ends training at that step (checkpoint saved). ``progress``
    shows a tqdm bar named ``label``. With cfg.ema > 0 an EMA of the weights (decay cfg.ema,
    started at the initial weights) is kept beside the training (checkpoint key "ema"; the
    raw weights stay under "model"), and the returned model holds the EMA weights. The state of
    adaptive collocation (cfg.rad_every > 0, key "rad"; its initial-condition pool, key "rad_ic") and of the initial-condition balancing
    (cfg.balance_every > 0, key "balance") is checkpointed too, so those runs resume exactly.

    Raises:
        ResumeMismatchError: resuming with a configuration that differs from the checkpoint's
            in anything but ``steps`` (nothing written).
        ValueError: an unreadable checkpoint (nothing written).
        FloatingPointError: a non-finite loss (the last checkpoint stays).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    model = build_model(cfg, dataset, sde)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    pool = ResidualPool.from_config(cfg) if Objective(cfg.objective) is Objective.PINN else None
    ic_pool = ResidualPool.from_config(cfg) if pool is not None and cfg.rad_ic else None
    curriculum = Curriculum.from_config(cfg) if Objective(cfg.objective) is Objective.PINN else None
    balancer = ICBalancer.from_config(cfg) if Objective(cfg.objective) is Objective.PINN else None
    ckpt = run_dir / "checkpoint.pt"
    elapsed0 = 0.0
    if resume and ckpt.is_file():
        try:
            saved = load_checkpoint(ckpt)
        except ValueError as err:
            raise ResumeMismatchError(str(err)) from err
        old = {**_BEFORE_OPTION, **saved["config"]}
        new = cfg.to_dict()
        diff = {k for k in new if k != "steps" and old.get(k) != new[k]}
        if diff:
            raise ResumeMismatchError(f"options differ from the checkpoint's in {sorted(diff)}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        if pool is not None:
            pool.load_state_dict(saved["rad"])
        if ic_pool is not None:
            ic_pool.load_state_dict(saved["rad_ic"])
        if balancer is not None:
            balancer.load_state_dict(saved["balance"])
        state = TrainState(step=int(saved["step"]), history=list(saved["history"]))
        if curriculum is not None:
            curriculum.draws = state.step
        elapsed0 = float(saved["seconds"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    loss_fn = make_loss(model, sde, dataset.sample, dataset.score_fn(sde), cfg, pool=pool, ic_pool=ic_pool,
                        curriculum=curriculum)
    t0 = time.perf_counter()

    def save() -> None:
        save_checkpoint(ckpt, {
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "step": state.step, "history": state.history,
            "seconds": elapsed0 + time.perf_counter() - t0,
            **({"ema": ema.state_dict()} if ema is not None else {}),
            **({"rad": pool.state_dict()} if pool is not None else {}),
            **({"rad_ic": ic_pool.state_dict()} if ic_pool is not None else {}),
            **({"balance": balancer.state_dict()} if balancer is not None else {}),
        })

    bar = tqdm(total=cfg.steps, initial=state.step, desc=label, unit="step", mininterval=2.0,
               disable=not progress)

    def cb(st: TrainState, row: dict[str, float]) -> None:
        bar.update(1)
        if st.step % 50 == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "step"})
        if st.step % checkpoint_every == 0 or st.step in (cfg.steps, stop_after):
            save()

    start_step = state.step
    try:
        train(model, loss_fn, opt, gen, cfg, state, callback=cb, stop_at=stop_after, ema=ema,
              balancer=balancer)
    finally:
        bar.close()
    if state.step == start_step:
        save()
    seconds_this = time.perf_counter() - t0
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    steps_this = state.step - start_step
    if ema is not None:
        ema.copy_to(model)  # after the last save: the checkpoint keeps the raw weights too
    return TrainRun(model=model, train_seconds=elapsed0 + seconds_this, steps=state.step,
                    steps_per_s=(steps_this / seconds_this) if steps_this else None,
                    final=state.history[-1] if state.history else {})


def load_run_model(model_dir: str | Path) -> tuple[PreconditionedScore, CauchyConfig]:
    """The model that `run_cauchy` evaluated from ``model_dir`` (a run's ``pinn`` or ``dsm``
    folder), in eval mode, and its configuration: `build_model` of the checkpoint's config with
    the EMA weights when cfg.ema > 0 (those are what `train_run` returns), else the raw ones.
    A config saved before an option existed gets the value that reproduces it (`_BEFORE_OPTION`).

    Cost: `build_model` (n_scale samples and one exact-score evaluation) and one torch.load.

    Raises:
        FileNotFoundError: no checkpoint.pt in model_dir.
        ValueError: the checkpoint cannot be read, its config is not a `CauchyConfig`, or its
            weights do not fit the model the config builds.
    """
    from scorefpe.data.synthetic import get_dataset
    from scorefpe.sde import make_sde

    saved = load_checkpoint(Path(model_dir) / "checkpoint.pt")
    try:
        cfg = CauchyConfig(**{**_BEFORE_OPTION, **saved["config"]})
        key = "ema" if cfg.ema > 0 else "model"
        model = build_model(cfg, get_dataset(cfg.dataset), make_sde(cfg.sde))
        model.load_state_dict(saved[key])
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{model_dir}: checkpoint does not hold a cauchy model ({type(err).__name__}: {err})") from None
    return model.eval(), cfg


@dataclass(frozen=True)
class CauchyEvalConfig:
    """Evaluation sizes of `run_cauchy` (see `evaluate_model`): n_samples samples per sampler,
    em_steps Euler-Maruyama steps, n_points / n_fp_points samples of q_t per t for the score
    error / r_FP(t), n_density true samples for the log-density comparison (0: skip),
    density_grid the side of the density figure's grid (0: no density figure)."""

    n_samples: int = 2000
    em_steps: int = 1000
    n_points: int = 4096
    n_fp_points: int = 256
    n_density: int = 256
    density_grid: int = 40


@dataclass
class CauchyResult:
    """What `run_cauchy` did: every run (name -> `TrainRun`; evaluated ones have ``eval``),
    the model evaluations per step, and the files written at the top of out_dir (results.json
    and figures; None / [] when some run stopped before cfg.steps)."""

    runs: dict[str, TrainRun]
    evals_per_step: int
    results_path: Path | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def finished(self) -> dict[str, TrainRun]:
        """The runs that reached their cfg.steps and were evaluated."""
        return {k: r for k, r in self.runs.items() if r.eval is not None}


def run_cauchy(
    cfg: CauchyConfig,
    dataset: Any,
    sde: SDE,
    out_dir: str | Path,
    *,
    baseline: bool = True,
    eval_cfg: CauchyEvalConfig | None = None,
    checkpoint_every: int = 250,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = False,
    on_run: Callable[[str, TrainRun], None] | None = None,
) -> CauchyResult:
    """Train ``cfg`` (into out_dir/pinn) and, with ``baseline``, its `baseline_config` (into
    out_dir/dsm) by `train_run`; evaluate each run that reached cfg.steps by `evaluate_model`
    (seed cfg.seed, t_min cfg.t_min, sizes from ``eval_cfg``, default `CauchyEvalConfig`()) and call ``on_run(name, run)``
    after each run (trained or stopped early: run.eval is None then). If at least one run was
    evaluated, write out_dir/results.json ({"config", "evals_per_step", "runs"}) and the figures
    (`plot_score_error`, `plot_samples`, and `plot_density` for D <= 2 with
    eval_cfg.density_grid > 0), all atomically.

    Cost: the training steps plus, per evaluated run, `evaluate_model` and (density figure)
    one probability-flow likelihood per grid point.

    Raises:
        ResumeMismatchError, ValueError, FloatingPointError: from `train_run`.
        EvaluationError: evaluating a trained run failed; results.json is written first.
    """
    out_dir = Path(out_dir)
    eval_cfg = eval_cfg if eval_cfg is not None else CauchyEvalConfig()
    n_eval = evals_per_step(cfg, dataset.dim)
    configs = {"pinn": cfg}
    if baseline:
        configs["dsm"] = baseline_config(cfg, dataset.dim)
    result = CauchyResult(runs={}, evals_per_step=n_eval)
    for name, c in configs.items():
        run = train_run(c, dataset, sde, out_dir / name, resume=resume, checkpoint_every=checkpoint_every,
                        stop_after=stop_after, progress=progress, label=name)
        result.runs[name] = run
        if run.steps >= c.steps:
            run.model.eval()
            t0 = time.perf_counter()
            try:
                run.eval, run.samples = evaluate_model(
                    run.model, sde, dataset, t_min=cfg.t_min, n_samples=eval_cfg.n_samples,
                    em_steps=eval_cfg.em_steps, seed=cfg.seed, n_density=eval_cfg.n_density,
                    n_points=eval_cfg.n_points, n_fp_points=eval_cfg.n_fp_points)
            except (RuntimeError, FloatingPointError) as err:
                # An ODE solver failure on one model must not lose the other's results: it is
                # recorded in results.json and raised after that file is written.
                run.eval_error = f"{type(err).__name__}: {err}"
            run.eval_seconds = time.perf_counter() - t0
        if on_run is not None:
            on_run(name, run)
    done = result.finished
    failed = {k: r for k, r in result.runs.items() if r.eval_error is not None}
    if not done:
        if failed:
            result.results_path = out_dir / "results.json"
            atomic_write_json(result.results_path, {
                "config": cfg.to_dict(), "evals_per_step": n_eval,
                "runs": {k: r.to_dict() for k, r in failed.items()}})
            raise EvaluationError(result)
        return result
    true = done[next(iter(done))].samples["true"]
    result.figures.append(plot_score_error(out_dir / "score_error.png", done))
    result.figures.append(plot_samples(out_dir / "samples.png", done, true, dataset.dim))
    if eval_cfg.density_grid > 0 and dataset.dim <= 2:
        n_grid = eval_cfg.density_grid if dataset.dim == 2 else 400
        models = {k: r.model for k, r in done.items()}
        result.figures.append(plot_density(out_dir / "density.png", models, sde, dataset, cfg.t_min, n_grid))
    result.results_path = out_dir / "results.json"
    atomic_write_json(result.results_path, {
        "config": cfg.to_dict(), "evals_per_step": n_eval,
        "runs": {k: r.to_dict() for k, r in {**done, **failed}.items()},
    })
    if failed:
        raise EvaluationError(result)
    return result


class EvaluationError(RuntimeError):
    """The evaluation of some trained run failed (e.g. the ODE solver); ``result`` holds every
    run, results.json (written) the evaluated ones and each failure's message."""

    def __init__(self, result: CauchyResult) -> None:
        self.result = result
        msgs = "; ".join(f"{k}: {r.eval_error}" for k, r in result.runs.items() if r.eval_error)
        super().__init__(f"evaluation failed ({msgs}); the other results are in {result.results_path}")


def plot_score_error(path: str | Path, runs: dict[str, TrainRun]) -> Path:
    """Two panels over t, one line per evaluated run: the q_t-weighted relative L2 score error
    (%, a dotted line at 5 %) and r_FP(t) with +-1 standard error bars; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in runs.items():
        ev = r.eval
        ax[0].plot(ev.t_grid, [100 * e for e in ev.rel_err], "o-", ms=3, label=name)
        ax[1].errorbar(ev.r_fp_t, ev.r_fp, yerr=ev.r_fp_se, fmt="o-", ms=3, label=name)
    ax[0].set(xscale="log", yscale="log", xlabel="t", ylabel="relative L2 score error (%)",
              title="q_t-weighted score error")
    ax[0].axhline(5, color="gray", ls=":", lw=1)
    ax[1].set(xscale="log", yscale="log", xlabel="t", ylabel="r_FP(t) = E||eps||^2 / D",
              title="score-FPE residual")
    for a in ax:
        a.legend(fontsize=8)
        a.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_samples(path: str | Path, runs: dict[str, TrainRun], true: Tensor, dim: int) -> Path:
    """One panel for the ``true`` samples (n, D) and one per (run, sampler em|ode): a histogram
    (D = 1) or a scatter of the first two coordinates, on the true samples' range +- 1; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("true", true)] + [(f"{n} {s}", r.samples.get(s)) for n, r in runs.items() for s in ("em", "ode")]
    fig, ax = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), sharex=True, sharey=True)
    for a, (title, x) in zip(ax, panels):
        if x is None:
            continue
        x = x.detach().double().numpy()
        if dim == 1:
            a.hist(x[:, 0], bins=120, density=True)
        else:
            a.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        a.set_title(title, fontsize=9)
    ref = true.double().numpy()
    lo, hi = ref.min(0) - 1.0, ref.max(0) + 1.0
    ax[0].set_xlim(lo[0], hi[0])
    if dim == 2:
        ax[0].set_ylim(lo[1], hi[1])
    fig.tight_layout()
    return save_figure(fig, path)


def plot_density(path: str | Path, models: dict[str, Any], sde: SDE, dataset: Any, t_min: float,
                 n_grid: int) -> Path:
    """The exact q_{t_min} and each model's probability-flow ODE density on `density_grid`
    (n_grid points for D = 1, n_grid x n_grid for D = 2); PNG at ``path``.

    Cost: one probability-flow likelihood (ODE solve with exact divergence) per grid point and model.

    Raises:
        ValueError: D not in (1, 2).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scorefpe.sampling.likelihood import probability_flow_likelihood

    pts = density_grid(dataset, n_grid)
    t = torch.full((pts.shape[0],), t_min, dtype=torch.float64)
    panels = [("true q_{t_min}", dataset.log_prob(pts, t, sde))]
    for name, m in models.items():
        lp = probability_flow_likelihood(m, sde, pts.float(), t_min=t_min).log_prob.double()
        panels.append((f"{name} (prob.-flow ODE)", lp))
    fig, ax = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3))
    for a, (title, lp) in zip(ax, panels):
        p = lp.exp().numpy()
        if dataset.dim == 1:
            a.plot(pts[:, 0].numpy(), p)
            a.plot(pts[:, 0].numpy(), panels[0][1].exp().numpy(), "k:", lw=1)
        else:
            a.imshow(p.reshape(n_grid, n_grid), origin="lower", cmap="viridis",
                     extent=[float(pts[:, 0].min()), float(pts[:, 0].max()),
                             float(pts[:, 1].min()), float(pts[:, 1].max())])
        a.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)

"""`scorefpe cauchy`: solve the score-FPE Cauchy problem with a PINN and compare with DSM."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import click

from scorefpe.data.synthetic import DATASETS


def _build(cfg, dataset, sde):
    import torch

    from scorefpe.models.mlp import MLPConfig
    from scorefpe.pinn import PreconditionedScore, Preconditioning, data_scale, local_scale

    gen = torch.Generator().manual_seed(cfg.seed + 1000)
    x0 = dataset.sample(20000, gen)
    sigma_local = None
    if Preconditioning(cfg.precond) is Preconditioning.LOCAL:
        # The initial score's RMS on q_{t_min} (the initial-condition points' distribution).
        t = torch.full((x0.shape[0],), cfg.t_min, dtype=x0.dtype)
        x, _ = sde.perturb(x0, t, gen)
        sigma_local = local_scale(dataset.score_fn(sde)(x, t), sde, cfg.t_min)
    return PreconditionedScore(MLPConfig(dim=dataset.dim, hidden=cfg.hidden, depth=cfg.depth), sde,
                               data_scale(x0), sigma_local=sigma_local, t_min=cfg.t_min, seed=cfg.seed)


def _run_one(cfg, dataset, sde, run_dir: Path, resume: bool, checkpoint_every: int, label: str,
             stop_after: int | None) -> dict:
    """Train (or resume) one model into run_dir; returns timing info. The CLI owns printing."""
    import torch
    from tqdm.auto import tqdm

    from scorefpe.pinn import TrainState, make_loss, train
    from scorefpe.training.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint

    model = _build(cfg, dataset, sde)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    ckpt = run_dir / "checkpoint.pt"
    elapsed0 = 0.0
    if resume and ckpt.is_file():
        saved = load_checkpoint(ckpt)
        old = dict(saved["config"])
        new = cfg.to_dict()
        diff = {k for k in new if k not in ("steps",) and old.get(k) != new[k]}
        if diff:
            raise click.UsageError(f"--resume: options differ from the checkpoint's in {sorted(diff)}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        state = TrainState(step=int(saved["step"]), history=list(saved["history"]))
        elapsed0 = float(saved["seconds"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    loss_fn = make_loss(model, sde, dataset.sample, dataset.score_fn(sde), cfg)
    t0 = time.perf_counter()

    def save() -> None:
        save_checkpoint(ckpt, {
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "step": state.step, "history": state.history,
            "seconds": elapsed0 + time.perf_counter() - t0,
        })

    bar = tqdm(total=cfg.steps, initial=state.step, desc=label, unit="step", mininterval=2.0)

    def cb(st, row) -> None:
        bar.update(1)
        if st.step % 50 == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step",)})
        if st.step % checkpoint_every == 0 or st.step in (cfg.steps, stop_after):
            save()

    start_step = state.step
    try:
        train(model, loss_fn, opt, gen, cfg, state, callback=cb, stop_at=stop_after)
    finally:
        bar.close()
    if state.step == start_step:
        save()
    seconds_this = time.perf_counter() - t0
    total = elapsed0 + seconds_this
    # metrics.jsonl is rewritten whole from the checkpoint's history: consistent after resumes.
    from scorefpe._util import atomic_write_text
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    steps_this = state.step - start_step
    return {"model": model, "train_seconds": total, "steps": state.step,
            "steps_per_s": (steps_this / seconds_this) if steps_this else None,
            "final": state.history[-1] if state.history else {}}


def _figures(out: Path, results: dict, samples: dict, dataset) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scorefpe._util import atomic_output

    written = []
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        ev = r["eval"]
        ax[0].plot(ev["t_grid"], [100 * e for e in ev["rel_err"]], "o-", ms=3, label=name)
        ax[1].errorbar(ev["r_fp_t"], ev["r_fp"], yerr=ev["r_fp_se"], fmt="o-", ms=3, label=name)
    ax[0].set(xscale="log", yscale="log", xlabel="t", ylabel="relative L2 score error (%)",
              title="q_t-weighted score error")
    ax[0].axhline(5, color="gray", ls=":", lw=1)
    ax[1].set(xscale="log", yscale="log", xlabel="t", ylabel="r_FP(t) = E||eps||^2 / D",
              title="score-FPE residual")
    for a in ax:
        a.legend(fontsize=8)
        a.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_output(out / "score_error.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    written.append("score_error.png")

    keys = [("true", "true")] + [(f"{n} {s}", (n, s)) for n in results for s in ("em", "ode")]
    fig, ax = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.0), sharex=True, sharey=True)
    for a, (title, key) in zip(ax, keys):
        x = samples["true"] if key == "true" else samples[key[0]].get(key[1])
        if x is None:
            continue
        x = x.detach().double().numpy()
        if dataset.dim == 1:
            a.hist(x[:, 0], bins=120, density=True)
        else:
            a.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        a.set_title(title, fontsize=9)
    ref = samples["true"].double().numpy()
    lo, hi = ref.min(0) - 1.0, ref.max(0) + 1.0
    ax[0].set_xlim(lo[0], hi[0])
    if dataset.dim == 2:
        ax[0].set_ylim(lo[1], hi[1])
    fig.tight_layout()
    with atomic_output(out / "samples.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    written.append("samples.png")
    return written


def _density_figure(out: Path, models: dict, sde, dataset, t_min: float, n_grid: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from scorefpe._util import atomic_output
    from scorefpe.evaluation.likelihood import probability_flow_likelihood
    from scorefpe.pinn import density_grid

    pts = density_grid(dataset, n_grid)
    t = torch.full((pts.shape[0],), t_min, dtype=torch.float64)
    panels = [("true q_{t_min}", dataset.log_prob(pts, t, sde))]
    for name, m in models.items():
        panels.append((f"{name} (prob.-flow ODE)", probability_flow_likelihood(m, sde, pts.float(), t_min=t_min).log_prob.double()))
    fig, ax = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3))
    for a, (title, lp) in zip(ax, panels):
        p = lp.exp().numpy()
        if dataset.dim == 1:
            a.plot(pts[:, 0].numpy(), p)
            a.plot(pts[:, 0].numpy(), panels[0][1].exp().numpy(), "k:", lw=1)
        else:
            a.imshow(p.reshape(n_grid, n_grid), origin="lower", cmap="viridis",
                     extent=[float(pts[:, 0].min()), float(pts[:, 0].max()), float(pts[:, 1].min()), float(pts[:, 1].max())])
        a.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_output(out / "density.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return "density.png"


@click.command()
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="gmm2d", show_default=True,
              help="Synthetic data set; it needs a closed-form score (the initial condition and the reference).")
@click.option("--sde", "sde_name", type=click.Choice(["ve", "vp"]), default="ve", show_default=True)
@click.option("--steps", type=int, default=3000, show_default=True, help="Optimiser steps (>= 1).")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Collocation points per step.")
@click.option("--batch-ic", type=click.IntRange(min=1), default=256, show_default=True,
              help="Initial-condition points per step.")
@click.option("--residual", type=click.Choice(["exact", "estimated"]), default="exact", show_default=True,
              help="exact: forward-mode d_t s, exact div; estimated: FD stencil + Hutchinson.")
@click.option("--init", "init", type=click.Choice(["exact", "dsm"]), default="exact", show_default=True,
              help="Initial condition at t_min: the exact score, or DSM at t_min (noisy-data variant).")
@click.option("--weighting", type=click.Choice(["natural", "none"]), default="natural", show_default=True,
              help="Residual weight w(t): b(t)^3/g(t)^2 (every noise level counts) or 1 (the paper).")
@click.option("--precond", type=click.Choice(["local", "global"]), default=None,
              help="Model wrapper: local (scale from the initial score's RMS, time tau(t); the default) or "
                   "global (the first version: scale from the data's spread, raw t; the default with --init dsm).")
@click.option("--collocation", type=click.Choice(["data", "mixed"]), default="data", show_default=True,
              help="data: perturbed data (the paper); mixed: half uniform on the widened data box.")
@click.option("--ic-weight", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--depth", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--t-min", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=1e-3,
              show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also train DSM with the same network and model evaluations per step.")
@click.option("--eval-samples", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--eval-points", type=click.IntRange(min=10), default=4096, show_default=True,
              help="Samples of q_t per t for the score error.")
@click.option("--fp-points", type=click.IntRange(min=2), default=256, show_default=True,
              help="Samples of q_t per t for r_FP(t) (exact residual).")
@click.option("--em-steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--density-points", type=click.IntRange(min=0), default=256, show_default=True,
              help="True samples at which the ODE log-density is compared (0: skip).")
@click.option("--density-grid", type=click.IntRange(min=0), default=40, show_default=True,
              help="Grid side of the density figure (0: no density figure).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR's checkpoints (same options; --steps may grow).")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop training at this step (checkpoint saved, no evaluation); continue with --resume.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run directory.")
def cauchy(dataset, sde_name, steps, batch, batch_ic, residual, init, weighting, precond, collocation, ic_weight, lr, hidden,
           depth, t_min, seed, baseline, eval_samples, eval_points, fp_points, em_steps, density_points, density_grid,
           checkpoint_every, resume, stop_after, out) -> None:
    """Learn all scores from the score FPE and the score at t_min alone (FP-Diffusion Sec. 6.1)."""
    if steps <= 0:
        raise click.BadParameter(f"{steps} must be >= 1", param_hint="--steps")
    import torch

    from scorefpe.data.synthetic import get_dataset
    from scorefpe.pinn import CauchyConfig, evals_per_step, evaluate_model
    from scorefpe.sde import make_sde
    from scorefpe.training.checkpoint import atomic_write_json

    ds = get_dataset(dataset)
    if not ds.has_score:
        raise click.BadParameter(
            f"{dataset!r} has no closed-form score: the Cauchy problem needs the score at t_min "
            f"and the evaluation needs the true score at every t", param_hint="--dataset")
    try:
        cfg = CauchyConfig(dataset=dataset, sde=sde_name, steps=steps, batch=batch, batch_ic=batch_ic,
                           lr=lr, lr_final=lr / 100, ic_weight=ic_weight, residual=residual,
                           weighting=weighting, precond=precond or ("global" if init == "dsm" else "local"),
                           collocation=collocation, init=init, t_min=t_min, hidden=hidden, depth=depth,
                           seed=seed)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise click.UsageError(f"--out {out!r} exists and is not empty; use --resume or another directory")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sde = make_sde(sde_name)
    n_eval = evals_per_step(cfg, ds.dim)
    runs = {"pinn": cfg}
    if baseline:
        runs["dsm"] = replace(cfg, objective="dsm", init="exact", dsm_batch=n_eval)
    click.echo(f"scorefpe cauchy: dataset={dataset} sde={sde_name} ({sde}) steps={steps} residual={residual} "
               f"init={init} weighting={weighting} precond={cfg.precond}; {n_eval} model evaluations per step")
    results, samples, models = {}, {}, {}
    for name, c in runs.items():
        info = _run_one(c, ds, sde, out_dir / name, resume, checkpoint_every, name, stop_after)
        if info["steps"] < c.steps:
            click.echo(f"[{name}] stopped at step {info['steps']} of {c.steps}; continue with --resume")
            continue
        model = info.pop("model").eval()
        models[name] = model
        t0 = time.perf_counter()
        ev, smp = evaluate_model(model, sde, ds, t_min=t_min, n_samples=eval_samples, em_steps=em_steps,
                                 seed=seed, n_density=density_points, n_points=eval_points,
                                 n_fp_points=fp_points)
        info["eval_seconds"] = time.perf_counter() - t0
        info["eval"] = ev.to_dict()
        results[name] = info
        samples[name] = smp
        s = ev.samples
        mw = s.get("em", {}).get("mode_weights")
        click.echo(f"[{name}] {info['steps']} steps, train {info['train_seconds']:.0f} s"
                   + (f" ({info['steps_per_s']:.2f} steps/s)" if info["steps_per_s"] else "")
                   + f"; mean rel. score error over t in [0.05, 1]: {100 * ev.mean_rel_err:.2f} %"
                   + f"; SW em/ode {s['em']['sw']:.3f}/{s['ode']['sw']:.3f} (true-vs-true {s['true']['sw']:.3f})"
                   + (f"; mode weights em {[round(v, 3) for v in mw]} ode "
                      f"{[round(v, 3) for v in s['ode']['mode_weights']]}" if mw else "")
                   + (f"; mean log p model {ev.density['model_mean_log_prob']:.3f} vs true "
                      f"{ev.density['true_mean_log_prob']:.3f}" if ev.density else ""))
    if not results:
        return
    samples["true"] = samples["pinn"]["true"]
    figs = _figures(out_dir, results, samples, ds)
    if density_grid > 0 and ds.dim <= 2:
        figs.append(_density_figure(out_dir, models, sde, ds, t_min, density_grid if ds.dim == 2 else 400))
    atomic_write_json(out_dir / "results.json", {
        "config": cfg.to_dict(), "evals_per_step": n_eval,
        "runs": {k: {kk: vv for kk, vv in v.items()} for k, v in results.items()},
    })
    click.echo(f"wrote {out_dir / 'results.json'} and {', '.join(figs)}")

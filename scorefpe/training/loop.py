"""The generic training loop: Adam + EMA on any loss that returns per-sample terms.

    loss_fn(model, x0, ctx) -> LossTerms       (scorefpe.penalties.LossTerms)

is called once per step on this process's rows of the global batch; ``ctx`` (a StepContext)
supplies the step's random generators. The loop reduces the terms (weighted means), stops on a
non-finite term, steps the optimizer, updates the EMA, writes metrics and checkpoints.

Run directory layout:
    config.json      the resolved configuration (written before the first step)
    checkpoint.pt    latest checkpoint: model, EMA, optimizer, scaler, RNG states, step (atomic)
    metrics.jsonl    one JSON object per line: {"kind": "step" | "epoch" | "stop", ...}

Resumption is exact: batches and noises are functions of (seed, step) (training.randomness,
training.data), and the checkpoint holds the full optimizer and EMA state, so on the same device
and software a resumed run reproduces the uninterrupted one bit for bit (tested on CPU).
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from scorefpe._util import remove_stale_temporaries
from scorefpe.penalties import LossTerms
from scorefpe.training import distributed as dd
from scorefpe.training.checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from scorefpe.training.config import RESUMABLE_CHANGES, Precision, TrainConfig, resolve_device
from scorefpe.training.data import BatchSource
from scorefpe.training.ema import EMA
from scorefpe.training.randomness import StepContext

Tensor = torch.Tensor
LossFn = Callable[[nn.Module, Tensor, StepContext], LossTerms]


class NonFiniteLossError(RuntimeError):
    """A loss term (or the gradient) became NaN/inf. The last good checkpoint is kept as it was."""

    def __init__(self, step: int, term: str, value: float, checkpoint_step: int | None) -> None:
        self.step = step
        self.term = term
        self.value = value
        self.checkpoint_step = checkpoint_step
        kept = (
            f"the last good checkpoint (step {checkpoint_step}) is kept"
            if checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"non-finite loss at step {step}: term {term!r} = {value}; training stopped, {kept}"
        )


@dataclass
class TrainResult:
    """What a call to ``train`` did: steps done in total, whether it stopped at max_steps, the
    last step's term means, and the run directory."""

    step: int
    finished: bool
    last_terms: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux: the process's peak resident set since it started.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"


# Settings added after checkpoints were written: a checkpoint whose config lacks one of them ran
# with the value it has by default, so it resumes under that value and only under it.
_DEFAULT_WHEN_ABSENT: dict[str, dict[str, Any]] = {
    "penalty": {"estimator": "autograd", "h_x": None, "t_proposal": "uniform"},
}


def _config_diff(old: dict[str, Any], new: dict[str, Any], section: str = "") -> list[str]:
    diffs = []
    absent_ok = _DEFAULT_WHEN_ABSENT.get(section, {})
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key not in old and key in absent_ok and b == absent_ok[key]:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{d}" for d in _config_diff(a, b, key)
                      if not (key == "train" and d in RESUMABLE_CHANGES)]
        elif a != b:
            diffs.append(key)
    return diffs


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["torch_cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in st:
        torch.cuda.set_rng_state(st["torch_cuda"], device)


class _Metrics:
    """Appends JSON lines to metrics.jsonl (main process only), one flushed line per record."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (left by a run interrupted after its checkpoint)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if int(rec.get("step", 0)) <= step:
                keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: BatchSource,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    run_config: dict[str, Any] | None = None,
    dist: dd.DistInfo | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` in place with Adam (lr = cfg.lr) on L = sum_k w_k mean(terms_k).

    model: an nn.Module (moved to the run's device). loss_fn: see the module docstring.
    data: a BatchSource whose batch_size equals cfg.batch_size (the global batch).
    run_dir: directory for config.json, checkpoint.pt and metrics.jsonl (created).
    resume: continue from run_dir/checkpoint.pt (the saved config must agree with this one except
        for epochs, max_steps, log_every, checkpoint_every, device).
    run_config: extra JSON-serialisable settings (model, SDE, penalty, data) saved in config.json
        and compared on resume.
    dist: data-parallel position (from training.distributed.init_from_env); None = one process.
        With more than one process the model is wrapped in DistributedDataParallel and only
        rank 0 writes files.
    progress: show a tqdm bar (main process) with the loss and images/s.

    Cost per step: one call of loss_fn, its backward, an Adam step, an EMA update, and one
    host synchronisation (the finiteness check).

    Raises:
        ValueError: batch size mismatch, a resume whose config differs, a fresh run in a
            directory that already has a checkpoint, no checkpoint to resume from.
        NonFiniteLossError: a term or the gradient became NaN/inf (nothing is written for that
            step; the last checkpoint stays as it was).
    """
    info = dist or dd.SINGLE
    run_dir = Path(run_dir)
    if data.batch_size != cfg.batch_size:
        raise ValueError(
            f"data batch size {data.batch_size} differs from the config's batch_size {cfg.batch_size}"
        )
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes"
        )
    device = resolve_device(cfg.device, info.local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but CUDA is not available")
    spe = data.steps_per_epoch
    total = cfg.epochs * spe
    limit = total if cfg.max_steps is None else min(total, cfg.max_steps)
    ckpt_path = run_dir / CHECKPOINT_NAME
    # JSON round trip: the saved and the compared configs then have the same types (lists).
    config = json.loads(json.dumps({"train": cfg.to_dict(), **(run_config or {})}))

    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ema = EMA(model, cfg.ema_decay)
    scaler = torch.amp.GradScaler(
        device.type, enabled=cfg.precision is Precision.FP16 and device.type == "cuda"
    )
    step = 0
    last_ckpt: int | None = None

    if resume:
        # On the CPU first: RNG states must stay CPU byte tensors; load_state_dict moves the rest.
        state = load_checkpoint(ckpt_path, map_location="cpu")
        remove_stale_temporaries(ckpt_path)  # left by a save that was killed mid-write
        diff = _config_diff(state["config"], config)
        if diff:
            raise ValueError(
                f"cannot resume {run_dir}: settings differ from the checkpoint's: {', '.join(diff)}"
            )
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], device)
        step = last_ckpt = int(state["step"])
    elif ckpt_path.exists():
        raise ValueError(
            f"{run_dir} already holds a checkpoint; resume it or choose another directory"
        )

    metrics = _Metrics(run_dir / METRICS_NAME, info.is_main)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_NAME, config)
        if resume:
            metrics.truncate_after(step)
        else:  # a fresh run must not append to the metrics of an earlier, abandoned one
            metrics.path.unlink(missing_ok=True)
    dd.barrier(info)

    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
        )

    def checkpoint() -> None:
        nonlocal last_ckpt
        if info.is_main:
            save_checkpoint(
                ckpt_path,
                {
                    "step": step,
                    "epoch": step // spe,
                    "index": step % spe,
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "rng": _rng_state(device),
                    "data": {"seed": cfg.seed, "epoch": step // spe, "index": step % spe},
                    "config": config,
                },
            )
        last_ckpt = step
        dd.barrier(info)

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if cfg.precision is Precision.BF16 else torch.float16)
        if cfg.precision is not Precision.FP32
        else contextlib.nullcontext()
    )
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=limit, initial=step, unit="step", dynamic_ncols=True)

    epoch_sums: dict[str, float] = {}
    epoch_steps = epoch_clipped = 0
    t_epoch = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last_means: dict[str, float] = {}
    try:
        while step < limit:
            epoch, index = divmod(step, spe)
            t0 = time.perf_counter()
            x0 = data.batch(epoch, index, info.rank, info.world_size).to(device)
            ctx = StepContext(cfg.seed, step, info.rank, info.world_size, device)
            with autocast:
                out = loss_fn(net, x0, ctx)
            loss = out.total()
            names = list(out.terms)
            means = torch.stack([out.terms[k].detach().float().mean() for k in names])
            bad = dd.all_reduce_max((~torch.isfinite(means)).float(), info)
            if bool(bad.any()):
                k = int(bad.nonzero()[0, 0])
                raise NonFiniteLossError(step + 1, names[k], float(means[k]), last_ckpt)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(opt)
                gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            else:
                gnorm = nn.utils.get_total_norm(
                    [p.grad for p in model.parameters() if p.grad is not None]
                )
            # Terms can be finite while a second-derivative penalty's gradient is not. With an
            # active fp16 scaler an inf gradient is normal: the scaler skips the step.
            if not scaler.is_enabled() and not bool(torch.isfinite(gnorm)):
                raise NonFiniteLossError(step + 1, "gradient", float(gnorm), last_ckpt)
            scaler.step(opt)
            scaler.update()
            ema.update(model)
            step += 1

            g_means = dd.all_reduce_mean(means, info).tolist()
            last_means = dict(zip(names, g_means))
            loss_val = sum(out.weights.get(k, 1.0) * v for k, v in last_means.items())
            dt = time.perf_counter() - t0
            ips = cfg.batch_size / dt if dt > 0 else float("nan")
            for k, v in last_means.items():
                epoch_sums[k] = epoch_sums.get(k, 0.0) + v
            epoch_steps += 1
            if cfg.grad_clip is not None and float(gnorm) > cfg.grad_clip:
                epoch_clipped += 1
            if step % cfg.log_every == 0 or step == limit:
                # grad_norm: the global norm before clipping (what grad_clip acts on).
                metrics.write(
                    {"kind": "step", "step": step, "epoch": epoch, "loss": loss_val,
                     "terms": last_means, "images_per_s": ips, "grad_norm": float(gnorm)}
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.4g}", img_s=f"{ips:.0f}", epoch=epoch)
            epoch_done = step % spe == 0
            if epoch_done:
                elapsed = time.perf_counter() - t_epoch
                mem, kind = _peak_memory(device)
                metrics.write(
                    {"kind": "epoch", "step": step, "epoch": epoch, "steps": epoch_steps,
                     "complete": epoch_steps == spe, "time_s": elapsed,
                     "images_per_s": epoch_steps * cfg.batch_size / elapsed,
                     "terms_mean": {k: v / epoch_steps for k, v in epoch_sums.items()},
                     "clipped_steps": epoch_clipped if cfg.grad_clip is not None else None,
                     "peak_mem_bytes": mem, "peak_mem_kind": kind}
                )
                epoch_sums, epoch_steps, t_epoch = {}, 0, time.perf_counter()
                epoch_clipped = 0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            if epoch_done or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
        if last_ckpt != step:
            checkpoint()
    except NonFiniteLossError as err:
        metrics.write({"kind": "stop", "step": err.step, "reason": "non-finite",
                       "term": err.term, "value": str(err.value)})
        raise
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(step=step, finished=step >= total, last_terms=last_means, run_dir=run_dir)

"""Cost of a training step with each penalty against plain DSM, on the same batch, in one process.

A step is what the training loop does: L = L_DSM + lambda P on one batch, its backward, an Adam
step. Each penalty gets its own copy of the network and optimizer (same initial weights, same
x(0), t, z); the variants are timed round-robin (one step of each, repeated), so slow phases of
a shared machine hit all of them alike, and the median over repeats is reported.

Memory: on CUDA the peak allocated memory of the step above what was allocated before it
(torch.cuda.max_memory_allocated, after a warm-up step has allocated the Adam state); on
every device the bytes autograd saves for the backward during the step (distinct storages,
recorded with saved-tensor hooks): the activation memory, which is what a penalty adds.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from scorefpe.models import ScoreNet, ScoreNetConfig
from scorefpe.penalties import Penalty, PenaltyConfig, penalized_dsm
from scorefpe.sde import make_sde
from scorefpe.training.config import resolve_device


@dataclass(frozen=True)
class BenchVariant:
    """One measured configuration: a penalty, evaluated on the full batch or a sub-batch."""

    penalty: Penalty
    sub_batch: int | None = None

    @property
    def label(self) -> str:
        name = "dsm" if self.penalty is Penalty.NONE else f"dsm+{self.penalty.value}"
        return name if self.sub_batch is None else f"{name} (sub-batch {self.sub_batch})"


@dataclass(frozen=True)
class BenchRow:
    """Timing (seconds per step: median and quartiles over repeats) and memory of a variant;
    ratios are against plain DSM's median / memory."""

    variant: BenchVariant
    times: tuple[float, ...]
    saved_bytes: int
    cuda_peak_bytes: int | None
    penalty_rse: tuple[float, ...] = ()

    @property
    def penalty_rel_se(self) -> float | None:
        """Median over the timed steps of the relative standard error of the penalty term's batch
        mean, sd(per-sample P) / sqrt(n) / mean(P) on the n = B (or sub-batch k) samples of that
        step: the estimator's noise, which a sub-batch raises by about sqrt(B / k). None for DSM."""
        return statistics.median(self.penalty_rse) if self.penalty_rse else None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def quartiles(self) -> tuple[float, float]:
        q = statistics.quantiles(self.times, n=4) if len(self.times) > 1 else [self.times[0]] * 3
        return q[0], q[2]


def default_variants(batch: int, sub_batch: int | None) -> list[BenchVariant]:
    """DSM, then SN, DIV, JAC, FP on the full batch, then DIV, JAC, FP on a sub-batch."""
    full = [BenchVariant(p) for p in (Penalty.NONE, Penalty.SN, Penalty.DIV, Penalty.JAC, Penalty.FP)]
    if sub_batch is None or sub_batch >= batch:
        return full
    return full + [BenchVariant(p, sub_batch) for p in (Penalty.DIV, Penalty.JAC, Penalty.FP)]


def bench_penalties(
    variants: Iterable[BenchVariant],
    *,
    batch: int = 64,
    repeats: int = 5,
    width: float = 1.0,
    sde: str = "vp",
    device: str = "auto",
    lam: float = 1e-3,
    seed: int = 0,
    images: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[BenchRow]:
    """Time ``repeats`` training steps of each variant (after a warm-up and a memory step each).

    images: (N >= batch, 1, 28, 28) in [0, 1], e.g. MNIST digits; default uniform noise (the
    cost of a step does not depend on the pixel values). Each timed repeat draws its own
    t ~ U[1e-5, 1], z ~ N(0, I) and (when N > batch) images, the same for every variant, and
    records the relative standard error of the penalty's batch mean (the estimator's noise).
    The first variant should be plain DSM (Penalty.NONE): ratios are taken against it.
    on_step: called after every step (len(variants) * (repeats + 2) calls), e.g. a progress bar.

    Raises:
        ValueError: batch/repeats < 1, no variants, or images of the wrong shape.
    """
    variants = list(variants)
    if not variants:
        raise ValueError("no variants to benchmark")
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be >= 1, got batch={batch}, repeats={repeats}")
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    if images is None:
        x0 = torch.rand(batch, 1, 28, 28, generator=gen)
    else:
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28) or images.shape[0] < batch:
            raise ValueError(f"images must have shape (N >= {batch}, 1, 28, 28), got {tuple(images.shape)}")
        x0 = images[:batch].float()
    the_sde = make_sde(sde)
    t = 1e-5 + (1 - 1e-5) * torch.rand(batch, generator=gen)
    z = torch.randn(x0.shape, generator=gen)
    x0, t, z = x0.to(dev), t.to(dev), z.to(dev)
    base = ScoreNet(the_sde, ScoreNetConfig(width=width), seed=seed).to(dev)
    lr_of = {Penalty.FP: 1e-3, Penalty.FPD: 1e-3}

    setups = []
    for v in variants:
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=lr_of.get(v.penalty, 5e-4))
        cfg = PenaltyConfig(penalty=v.penalty, lam=lam if v.penalty is not Penalty.NONE else 0.0,
                            sub_batch=v.sub_batch)
        setups.append((v, model, opt, cfg))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(model, opt, cfg, k: int, record: dict | None = None, values: list | None = None) -> float:
        probe_gen = torch.Generator(device=dev).manual_seed(seed + k)
        sync()
        t0 = time.perf_counter()
        if record is None:
            out = penalized_dsm(model, the_sde, x0, t, z, cfg, generator=probe_gen)
            loss = out.total()
        else:
            def pack(x: torch.Tensor) -> torch.Tensor:
                try:
                    st = x.untyped_storage()
                    record[(st.device.type, st.data_ptr())] = st.nbytes()
                except RuntimeError:
                    # torch.func wrappers (forward-mode duals) expose no storage: count the
                    # tensor itself (views of one storage may then be counted twice).
                    record[("tensor", id(x))] = x.numel() * x.element_size()
                return x

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                out = penalized_dsm(model, the_sde, x0, t, z, cfg, generator=probe_gen)
                loss = out.total()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        dt = time.perf_counter() - t0
        if values is not None and cfg.penalty is not Penalty.NONE:
            p = out.terms[cfg.penalty.value].detach().double()
            if p.numel() > 1 and float(p.mean()) != 0.0:
                values.append(float(p.std() / p.numel() ** 0.5 / p.mean().abs()))
        if on_step is not None:
            on_step()
        return dt

    saved: dict[BenchVariant, int] = {}
    peaks: dict[BenchVariant, int | None] = {}
    for v, model, opt, cfg in setups:  # warm-up: first calls, Adam state allocated
        step(model, opt, cfg, 0)
    for v, model, opt, cfg in setups:  # memory
        record: dict = {}
        before = 0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = int(torch.cuda.memory_allocated(dev))
        step(model, opt, cfg, 1, record)
        saved[v] = sum(record.values())
        # Peak above what was allocated before the step (all variants' weights stay resident).
        peaks[v] = int(torch.cuda.max_memory_allocated(dev)) - before if dev.type == "cuda" else None
    times: dict[BenchVariant, list[float]] = {v: [] for v in variants}
    values: dict[BenchVariant, list[float]] = {v: [] for v in variants}
    pool = images.float() if images is not None else None
    for r in range(repeats):
        draw = torch.Generator().manual_seed(seed + 1000 + r)
        if pool is not None and pool.shape[0] > batch:
            x0 = pool[torch.randperm(pool.shape[0], generator=draw)[:batch]].to(dev)
        t = (1e-5 + (1 - 1e-5) * torch.rand(batch, generator=draw)).to(dev)
        z = torch.randn(x0.shape, generator=draw).to(dev)
        for v, model, opt, cfg in setups:
            times[v].append(step(model, opt, cfg, r + 2, values=values[v]))
    return [BenchRow(v, tuple(times[v]), saved[v], peaks[v], tuple(values[v])) for v in variants]


def format_table(rows: list[BenchRow]) -> str:
    """A markdown table: variant, median s/step (quartiles), time ratio, saved MiB, memory ratio,
    the relative standard error of the penalty's batch mean."""
    ref = rows[0]
    cuda = ref.cuda_peak_bytes is not None
    head = ("| step | median s/step (q25-q75) | time vs DSM | autograd-saved MiB | saved vs DSM "
            "| rel. SE of penalty (median over steps) |")
    sep = "|---|---|---|---|---|---|"
    if cuda:
        head += " CUDA step peak MiB | peak vs DSM |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        lo, hi = r.quartiles
        line = (
            f"| {r.variant.label} | {r.median:.4f} ({lo:.4f}-{hi:.4f}) | {r.median / ref.median:.2f}x "
            f"| {r.saved_bytes / 2**20:.1f} | {r.saved_bytes / max(ref.saved_bytes, 1):.2f}x |"
        )
        rse = r.penalty_rel_se
        line += " - |" if rse is None else f" {rse:.2f} |"
        if cuda:
            assert r.cuda_peak_bytes is not None and ref.cuda_peak_bytes is not None
            line += f" {r.cuda_peak_bytes / 2**20:.1f} | {r.cuda_peak_bytes / ref.cuda_peak_bytes:.2f}x |"
        lines.append(line)
    return "\n".join(lines)

"""Cost of a training step with each penalty against plain DSM, on the same batch, in one process.

A step is what the training loop does: L = L_DSM + lambda P on one batch, its backward, an Adam
step. Each variant gets its own copy of the network and optimizer (same initial weights, same
x(0), t, z); the variants are timed round-robin (one step of each, repeated), so slow phases of
a shared machine hit all of them alike, and the median over repeats is reported.

Variants: plain DSM; each penalty with scorefpe's estimators (``autograd``: reverse-mode VJPs and
a double backward; ``fd``: finite differences in x, `scorefpe.penalties.Estimator`); the
anchor-style implementation of the field (separate DSM forward, Hutchinson by a VJP with
create_graph, the FP stencil evaluated at all its nodes, grad_x L by autograd, as in
FP-Diffusion's losses: `operators.anchor_*`); sub-batches; and *floors*: a plain DSM step on the
batch replicated r times, the cost of r network rows per sample with nothing else, against which
an estimator that evaluates r rows per sample is measured ("ratio to its own floor").

Memory: on CUDA the peak allocated memory of the step above what was allocated before it
(torch.cuda.max_memory_allocated); on CPU the growth of the peak resident set during the step
(VmHWM after minus VmRSS before, freed heap returned with malloc_trim and the peak reset
through /proc/self/clear_refs; Linux only, None elsewhere); on every device the bytes autograd
saves for the backward (distinct storages, recorded with saved-tensor hooks): the activation memory, which is what a penalty adds.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from scorefpe import operators
from scorefpe.models import ScoreNet, ScoreNetConfig
from scorefpe.penalties import (
    Estimator,
    LossTerms,
    Penalty,
    PenaltyConfig,
    dsm_loss,
    penalized_dsm,
)
from scorefpe.sde import SDE, bcast, make_sde
from scorefpe.training.config import resolve_device

T_MIN = 1e-5
_ANCHORED = (Penalty.DIV, Penalty.JAC, Penalty.FP)


@dataclass(frozen=True)
class BenchVariant:
    """One measured configuration: a penalty on the full batch or a sub-batch, with scorefpe's
    estimator or the anchor-style implementation; or a floor (plain DSM on ``replicate`` copies
    of the batch)."""

    penalty: Penalty
    sub_batch: int | None = None
    estimator: Estimator = Estimator.AUTOGRAD
    anchor: bool = False
    replicate: int = 1

    @property
    def label(self) -> str:
        if self.replicate > 1:
            return f"floor: dsm on {self.replicate}B"
        name = "dsm" if self.penalty is Penalty.NONE else f"dsm+{self.penalty.value}"
        if self.anchor:
            name = f"anchor {name}"
        if self.estimator is Estimator.FD:
            name += " [fd]"
        return name if self.sub_batch is None else f"{name} (sub-batch {self.sub_batch})"

    @property
    def rows(self) -> int | None:
        """Network rows per sample the step evaluates (its floor); None for sub-batches."""
        if self.replicate > 1:
            return self.replicate
        if self.sub_batch is not None:
            return None
        p, fd = self.penalty, self.estimator is Estimator.FD
        if p in (Penalty.NONE, Penalty.SN):
            return 1
        if p in (Penalty.DIV, Penalty.JAC):
            return 2 if (fd or self.anchor) else 1
        # FP/FPD: autograd 1 (VJP) + 2 stencil nodes; fd 4 x-rows + 2; anchor 1 + 1 + 3.
        return 5 if self.anchor else (6 if fd else 3)


@dataclass(frozen=True)
class BenchRow:
    """Timing (seconds per step: median and quartiles over repeats) and memory of a variant;
    ratios are against plain DSM's median / memory."""

    variant: BenchVariant
    times: tuple[float, ...]
    saved_bytes: int
    cuda_peak_bytes: int | None
    penalty_rse: tuple[float, ...] = ()
    rss_peak_bytes: int | None = None
    error: float | None = None

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


def default_variants(batch: int, sub_batch: int | None, *, anchor: bool = True,
                     fd: bool = True, floors: bool = True) -> list[BenchVariant]:
    """DSM, SN, DIV, JAC, FP, FPD (autograd); DIV, JAC, FP with the fd estimators; the
    anchor-style DIV, JAC, FP; DIV, JAC, FP on a sub-batch; the floors for 2, 3, 5, 6 rows."""
    out = [BenchVariant(p) for p in (Penalty.NONE, Penalty.SN, Penalty.DIV, Penalty.JAC,
                                     Penalty.FP, Penalty.FPD)]
    if fd:
        out += [BenchVariant(p, estimator=Estimator.FD) for p in _ANCHORED]
    if anchor:
        out += [BenchVariant(p, anchor=True) for p in _ANCHORED]
    if sub_batch is not None and sub_batch < batch:
        out += [BenchVariant(p, sub_batch) for p in _ANCHORED]
    if floors:
        rows = sorted({v.rows for v in out if v.rows is not None and v.rows > 1})
        out += [BenchVariant(Penalty.NONE, replicate=r) for r in rows]
    return out


def anchor_penalized_dsm(
    model: Callable, sde: SDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
    penalty: Penalty, lam: float, generator: torch.Generator | None, t_min: float = T_MIN,
) -> LossTerms:
    """L_DSM + lambda P the way the field writes it: a DSM forward, then the penalty from its own
    forward (`operators.anchor_*`), one Gaussian probe drawn as scorefpe draws it (so the same
    generator seed gives the same probe and the same per-sample values)."""
    mean, std = sde.marginal(x0, t)
    xt = mean + bcast(std, x0) * z
    terms = {"dsm": dsm_loss(model(xt, t), z, std)}
    xs = xt.detach()
    v = operators.probes(1, xs, generator=generator)[0]
    if penalty is Penalty.DIV:
        pen = operators.anchor_divergence(model, xs, t, v).pow(2) / xs[0].numel()
    elif penalty is Penalty.JAC:
        pen = operators.anchor_jacobian_frobenius_sq(model, xs, t, v) / xs[0].numel()
    elif penalty is Penalty.FP:
        eps = operators.anchor_fp_residual(model, sde, xs, t, v, t_min=t_min)
        pen = eps.reshape(len(xs), -1).pow(2).sum(-1)
    else:
        raise ValueError(f"no anchor-style implementation of penalty {penalty.value!r}")
    terms[penalty.value] = pen
    return LossTerms(terms, {"dsm": 1.0, penalty.value: lam})


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap pages to the kernel (glibc malloc_trim: otherwise the memory that earlier
    variants freed stays resident and a step that reuses it shows no growth), then reset the
    kernel's peak-RSS mark (VmHWM) of this process; False where that is impossible."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def estimator_errors(
    model: Callable, sde: SDE, x: torch.Tensor, t: torch.Tensor, seed: int, t_min: float = T_MIN,
    draws: int = 3,
) -> dict[tuple[Penalty, Estimator, bool], float]:
    """Relative error of each variant's batch-mean penalty against its reference on the same
    probes, summed over ``draws`` probe draws (seeds seed, seed + 1, ...) before dividing, so
    that the mean-zero O(h) part of the fd errors partly averages out: autograd vs the
    anchor-style implementation (the "same quantity" check, round-off only); fd DIV vs autograd
    DIV (v^T J v either way); fd JAC vs ||J v||^2 with J v by forward mode; fd FP vs <eps, v>^2
    with eps the autograd residual on the same divergence probe u. Signed: (fd - ref) / ref.
    Keys (penalty, estimator, anchor): the anchor rows carry the check's value."""
    acc: dict[tuple[Penalty, Estimator, bool], list[tuple[float, float]]] = {}
    for k in range(draws):
        for key, pair in _error_pairs(model, sde, x, t, seed + k, t_min).items():
            acc.setdefault(key, []).append(pair)
    return {key: (sum(a for a, _ in v) - sum(b for _, b in v)) / sum(b for _, b in v)
            for key, v in acc.items()}


def _error_pairs(
    model: Callable, sde: SDE, x: torch.Tensor, t: torch.Tensor, seed: int, t_min: float,
) -> dict[tuple[Penalty, Estimator, bool], tuple[float, float]]:
    """(batch-mean estimate, batch-mean reference) per key, one probe draw."""

    def gen() -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(seed)

    def rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        return float(a.detach().double().mean()), float(b.detach().double().mean())

    v = operators.probes(1, x, generator=gen())[0]
    out: dict[tuple[Penalty, Estimator, bool], tuple[float, float]] = {}
    ag_div = operators.divergence(model, x, t, method="hutchinson", generator=gen())
    out[(Penalty.DIV, Estimator.AUTOGRAD, True)] = rel(ag_div, operators.anchor_divergence(model, x, t, v))
    fd_div = operators.divergence(model, x, t, method="hutchinson-fd", generator=gen())
    out[(Penalty.DIV, Estimator.FD, False)] = rel(fd_div.pow(2), ag_div.pow(2))
    ag_jac = operators.jacobian_frobenius_sq(model, x, t, method="hutchinson", generator=gen())
    out[(Penalty.JAC, Estimator.AUTOGRAD, True)] = rel(
        ag_jac, operators.anchor_jacobian_frobenius_sq(model, x, t, v))
    fd_jac = operators.jacobian_frobenius_sq(model, x, t, method="hutchinson-fd", generator=gen())
    jv = operators.jacobian_vector_product(model, x, t, v)
    out[(Penalty.JAC, Estimator.FD, False)] = rel(fd_jac, jv.reshape(len(x), -1).pow(2).sum(-1))
    eps = operators.fp_residual(model, sde, x, t, method="estimated", generator=gen(), t_min=t_min)
    anchor_eps = operators.anchor_fp_residual(model, sde, x, t, v, t_min=t_min)
    sq = lambda e: e.reshape(len(x), -1).pow(2).sum(-1)  # noqa: E731
    out[(Penalty.FP, Estimator.AUTOGRAD, True)] = rel(sq(eps), sq(anchor_eps))
    g = gen()
    operators.probes(1, x, generator=g)  # u: the residual's divergence probe
    w = operators.probes(1, x, generator=g)[0]  # the projection probe of the fd estimator
    proj = operators.projected_fp_residual(model, sde, x, t, generator=gen(), t_min=t_min)[0]
    out[(Penalty.FP, Estimator.FD, False)] = rel(proj.pow(2), (eps * w).reshape(len(x), -1).sum(-1).pow(2))
    return out


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
    check_errors: bool = True,
) -> list[BenchRow]:
    """Time ``repeats`` training steps of each variant (after a warm-up and a memory step each).

    images: (N >= batch, 1, 28, 28) in [0, 1], e.g. MNIST digits; default uniform noise (the
    cost of a step does not depend on the pixel values). Each timed repeat draws its own
    t ~ U[1e-5, 1], z ~ N(0, I) and (when N > batch) images, the same for every variant, and
    records the relative standard error of the penalty's batch mean (the estimator's noise).
    The first variant should be plain DSM (Penalty.NONE): ratios are taken against it.
    check_errors: also compute `estimator_errors` on the first batch (BenchRow.error).
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
    t = T_MIN + (1 - T_MIN) * torch.rand(batch, generator=gen)
    z = torch.randn(x0.shape, generator=gen)
    x0, t, z = x0.to(dev), t.to(dev), z.to(dev)
    base = ScoreNet(the_sde, ScoreNetConfig(width=width), seed=seed).to(dev)
    lr_of = {Penalty.FP: 1e-3, Penalty.FPD: 1e-3}

    errors: dict = {}
    if check_errors:
        mean, std = the_sde.marginal(x0, t)
        errors = estimator_errors(base, the_sde, (mean + bcast(std, x0) * z).detach(), t, seed)

    setups = []
    for v in variants:
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=lr_of.get(v.penalty, 5e-4))
        cfg = PenaltyConfig(penalty=v.penalty, lam=lam if v.penalty is not Penalty.NONE else 0.0,
                            sub_batch=v.sub_batch, estimator=v.estimator, t_min=T_MIN)
        setups.append((v, model, opt, cfg))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def loss_of(v: BenchVariant, model, cfg, probe_gen) -> LossTerms:
        if v.anchor:
            return anchor_penalized_dsm(model, the_sde, x0, t, z, v.penalty, lam, probe_gen)
        if v.replicate > 1:
            r = v.replicate
            return penalized_dsm(model, the_sde, x0.repeat(r, 1, 1, 1), t.repeat(r),
                                 z.repeat(r, 1, 1, 1), cfg, generator=probe_gen)
        return penalized_dsm(model, the_sde, x0, t, z, cfg, generator=probe_gen)

    def step(v, model, opt, cfg, k: int, record: dict | None = None, values: list | None = None) -> float:
        probe_gen = torch.Generator(device=dev).manual_seed(seed + k)
        sync()
        t0 = time.perf_counter()
        if record is None:
            out = loss_of(v, model, cfg, probe_gen)
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
                out = loss_of(v, model, cfg, probe_gen)
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
    rss: dict[BenchVariant, int | None] = {}
    for v, model, opt, cfg in setups:  # warm-up: first calls, Adam state allocated
        step(v, model, opt, cfg, 0)
    for v, model, opt, cfg in setups:  # memory
        record: dict = {}
        before = 0
        rss_before = None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = int(torch.cuda.memory_allocated(dev))
        elif _reset_peak_rss():
            rss_before = _proc_status_kib("VmRSS")
        step(v, model, opt, cfg, 1, record)
        saved[v] = sum(record.values())
        # Peak above what was allocated before the step (all variants' weights stay resident).
        peaks[v] = int(torch.cuda.max_memory_allocated(dev)) - before if dev.type == "cuda" else None
        hwm = _proc_status_kib("VmHWM") if rss_before is not None else None
        rss[v] = None if hwm is None or rss_before is None else 1024 * max(0, hwm - rss_before)
    times: dict[BenchVariant, list[float]] = {v: [] for v in variants}
    values: dict[BenchVariant, list[float]] = {v: [] for v in variants}
    pool = images.float() if images is not None else None
    for r in range(repeats):
        draw = torch.Generator().manual_seed(seed + 1000 + r)
        if pool is not None and pool.shape[0] > batch:
            x0 = pool[torch.randperm(pool.shape[0], generator=draw)[:batch]].to(dev)
        t = (T_MIN + (1 - T_MIN) * torch.rand(batch, generator=draw)).to(dev)
        z = torch.randn(x0.shape, generator=draw).to(dev)
        for v, model, opt, cfg in setups:
            times[v].append(step(v, model, opt, cfg, r + 2, values=values[v]))
    return [
        BenchRow(v, tuple(times[v]), saved[v], peaks[v], tuple(values[v]), rss[v],
                 errors.get((v.penalty, v.estimator, v.anchor)) if v.sub_batch is None else None)
        for v in variants
    ]


def speedups(rows: list[BenchRow]) -> dict[str, float]:
    """anchor-style median / scorefpe median, per scorefpe variant that has an anchor row."""
    anchor = {r.variant.penalty: r.median for r in rows if r.variant.anchor}
    return {r.variant.label: anchor[r.variant.penalty] / r.median for r in rows
            if not r.variant.anchor and r.variant.sub_batch is None and r.variant.replicate == 1
            and r.variant.penalty in anchor}


def format_table(rows: list[BenchRow]) -> str:
    """A markdown table: variant, median s/step (quartiles), time ratio to DSM, rows per sample
    and the ratio to that floor, the speed-up over the anchor-style implementation, the relative
    error against the reference on the same probes, saved MiB, peak memory, the relative
    standard error of the penalty's batch mean."""
    ref = rows[0]
    cuda = ref.cuda_peak_bytes is not None
    floor = {r.variant.replicate: r.median for r in rows if r.variant.penalty is Penalty.NONE
             and not r.variant.anchor and r.variant.sub_batch is None}
    up = speedups(rows)
    mem = "CUDA step peak MiB" if cuda else "peak RSS growth MiB"
    head = ("| step | median s/step (q25-q75) | time vs DSM | rows | vs own floor | speed-up vs anchor "
            f"| rel. error vs reference | autograd-saved MiB | saved vs DSM | {mem} "
            "| rel. SE of penalty (median over steps) |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    lines = [head, sep]
    for r in rows:
        lo, hi = r.quartiles
        v = r.variant
        rows_s = "-" if v.rows is None else str(v.rows)
        fl = floor.get(v.rows) if v.rows is not None and v.replicate == 1 else None
        fl_s = "-" if fl is None else f"{r.median / fl:.2f}x"
        sp = up.get(v.label)
        sp_s = "-" if sp is None else f"{sp:.2f}x"
        err_s = "-" if r.error is None else f"{r.error:+.1e}"
        peak = r.cuda_peak_bytes if cuda else r.rss_peak_bytes
        peak_s = "-" if peak is None else f"{peak / 2**20:.0f}"
        line = (
            f"| {v.label} | {r.median:.4f} ({lo:.4f}-{hi:.4f}) | {r.median / ref.median:.2f}x "
            f"| {rows_s} | {fl_s} | {sp_s} | {err_s} "
            f"| {r.saved_bytes / 2**20:.1f} | {r.saved_bytes / max(ref.saved_bytes, 1):.2f}x | {peak_s} |"
        )
        rse = r.penalty_rel_se
        line += " - |" if rse is None else f" {rse:.2f} |"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Where one FP step's time goes.
# --------------------------------------------------------------------------------------------


def profile_fp_step(
    *,
    batch: int = 64,
    repeats: int = 5,
    width: float = 1.0,
    sde: str = "vp",
    device: str = "auto",
    lam: float = 1e-3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Median seconds of the phases of one training step with the FP penalty, for the autograd
    estimator (forward + VJP for div_x s, double backward for grad_x L, the stencil's forwards,
    the loss and the outer backward, the Adam step) and the fd estimator (the forward rows in x
    and in t, the outer backward, Adam), and a plain DSM step (forward, backward, Adam), timed
    round-robin with fresh t, z each repeat. Returns {"dsm" | "fp" | "fp [fd]": {phase: s}}."""
    dev = resolve_device(device)
    the_sde = make_sde(sde)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 1, 28, 28, generator=gen).to(dev)
    base = ScoreNet(the_sde, ScoreNetConfig(width=width), seed=seed).to(dev)
    models = {k: copy.deepcopy(base) for k in ("dsm", "fp", "fp [fd]")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run(kind: str, t: torch.Tensor, z: torch.Tensor, k: int) -> dict[str, float]:
        model, opt = models[kind], opts[kind]
        probe_gen = torch.Generator(device=dev).manual_seed(seed + k)
        mean, std = the_sde.marginal(x0, t)
        xt = (mean + bcast(std, x0) * z).detach()
        sync()
        t0 = time.perf_counter()
        if kind == "dsm":
            s = model(xt, t)
            sync()
            ph = {"forward (B rows)": time.perf_counter() - t0}
            pen = None
        elif kind == "fp":
            s, eps, ph = operators.fp_residual_phase_times(model, the_sde, xt, t, generator=probe_gen,
                                                           t_min=T_MIN, sync=sync)
            pen = eps.reshape(batch, -1).pow(2).sum(-1)
        else:
            s, _, r = operators.score_and_projected_fp_residual(
                model, the_sde, xt, t, generator=probe_gen, t_min=T_MIN, create_graph=True)
            pen = r.pow(2).mean(0)
            sync()
            ph = {"forward rows (4B in x, 2B in t)": time.perf_counter() - t0}
        t1 = time.perf_counter()
        loss = dsm_loss(s, z, std).mean()
        if pen is not None:
            loss = loss + lam * pen.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        ph["loss + outer backward"] = t2 - t1
        opt.step()
        sync()
        ph["Adam step"] = time.perf_counter() - t2
        ph["total"] = time.perf_counter() - t0
        return ph

    draws = []
    for r in range(repeats + 1):
        g = torch.Generator().manual_seed(seed + 1000 + r)
        draws.append(((T_MIN + (1 - T_MIN) * torch.rand(batch, generator=g)).to(dev),
                      torch.randn(x0.shape, generator=g).to(dev)))
    acc: dict[str, dict[str, list[float]]] = {k: {} for k in models}
    for r, (t, z) in enumerate(draws):
        for kind in models:
            ph = run(kind, t, z, r)
            if r == 0:
                continue  # warm-up
            for name, sec in ph.items():
                acc[kind].setdefault(name, []).append(sec)
    return {k: {n: statistics.median(v) for n, v in d.items()} for k, d in acc.items()}


def format_profile(prof: dict[str, dict[str, float]]) -> str:
    """Markdown: phase, median seconds, share of its step, and the step's ratio to DSM."""
    dsm_total = prof["dsm"]["total"]
    lines = ["| step | phase | median s | share of step |", "|---|---|---|---|"]
    for kind, phases in prof.items():
        total = phases["total"]
        for name, sec in phases.items():
            if name == "total":
                continue
            lines.append(f"| {kind} | {name} | {sec:.4f} | {100 * sec / total:.0f} % |")
        lines.append(f"| {kind} | **total** | {total:.4f} | {total / dsm_total:.2f}x DSM |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Cost at equal variance: the penalty gradient's variance per second, uniform t vs a proposal.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VarianceRow:
    """Trace of the covariance of a term's parameter gradient over independent batches, and the
    median seconds of one evaluation (term forward + backward) under one time proposal."""

    term: str
    proposal: str
    variance: float
    seconds: float
    mean_sq_norm: float

    @property
    def cost(self) -> float:
        """variance x seconds: the compute needed for a given variance (lower is cheaper)."""
        return self.variance * self.seconds


def gradient_variance(
    terms: Iterable[tuple[Penalty, Estimator]],
    proposals: Iterable[str] = ("uniform", "log-mixture"),
    *,
    batch: int = 64,
    draws: int = 16,
    width: float = 1.0,
    sde: str = "vp",
    device: str = "auto",
    seed: int = 0,
    images: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[VarianceRow]:
    """For each term (Penalty.NONE = the DSM term) and each proposal, the gradient of the term's
    weighted batch mean with respect to the network's parameters on ``draws`` independent
    batches (the same digits, z, uniforms and probes for every term and proposal: draw r uses
    seed + 2000 + r), at fixed parameters; returns tr Cov of those gradients and the median
    seconds per evaluation. Variants run round-robin within each draw."""
    from scorefpe.penalties import draw_times

    terms, proposals = list(terms), list(proposals)
    dev = resolve_device(device)
    the_sde = make_sde(sde)
    model = ScoreNet(the_sde, ScoreNetConfig(width=width), seed=seed).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    pool = images.float() if images is not None else torch.rand(
        max(batch, 1024), 1, 28, 28, generator=torch.Generator().manual_seed(seed))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    grads: dict[tuple[str, str], list[torch.Tensor]] = {}
    secs: dict[tuple[str, str], list[float]] = {}
    for r in range(draws + 1):
        g = torch.Generator().manual_seed(seed + 2000 + r)
        x0 = pool[torch.randperm(pool.shape[0], generator=g)[:batch]].to(dev)
        z = torch.randn(x0.shape, generator=g).to(dev)
        u, c = torch.rand(batch, generator=g), torch.rand(batch, generator=g)
        for prop in proposals:
            t, w = draw_times(u, c, T_MIN, the_sde.T, prop)
            t, w = t.to(dev), w.to(dev)
            for pen, est in terms:
                name = "dsm" if pen is Penalty.NONE else BenchVariant(pen, estimator=est).label
                cfg = PenaltyConfig(penalty=pen, lam=1.0 if pen is not Penalty.NONE else 0.0,
                                    estimator=est, t_min=T_MIN, t_proposal=prop)
                probe_gen = torch.Generator(device=dev).manual_seed(seed + 3000 + r)
                sync()
                t0 = time.perf_counter()
                out = penalized_dsm(model, the_sde, x0, t, z, cfg, generator=probe_gen, weights=w)
                key = "dsm" if pen is Penalty.NONE else pen.value
                gr = torch.autograd.grad(out.terms[key].mean(), params, allow_unused=True)
                sync()
                dt = time.perf_counter() - t0
                if on_step is not None:
                    on_step()
                if r == 0:
                    continue  # warm-up
                flat = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                  for x, p in zip(gr, params)]).double().cpu()
                grads.setdefault((name, prop), []).append(flat)
                secs.setdefault((name, prop), []).append(dt)
    rows = []
    for (name, prop), gl in grads.items():
        stack = torch.stack(gl)
        dev2 = (stack - stack.mean(0)).pow(2).sum(1).sum()
        var = float(dev2 / (len(gl) - 1)) if len(gl) > 1 else float("nan")
        rows.append(VarianceRow(name, prop, var, statistics.median(secs[(name, prop)]),
                                float(stack.mean(0).pow(2).sum())))
    return rows


def format_variance_table(rows: list[VarianceRow]) -> str:
    """Markdown: term, proposal, tr Cov of the gradient, s/evaluation, variance x seconds (the
    compute for a given variance), relative to uniform t for the same term and to the autograd
    estimator of the same penalty under uniform t."""
    uni = {r.term: r.cost for r in rows if r.proposal == "uniform"}
    lines = ["| term | t proposal | tr Cov(gradient) | s / evaluation | variance x seconds "
             "| cost vs uniform t | cost vs autograd, uniform t |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = uni.get(r.term)
        rel_s = "-" if rel is None or rel == 0 else f"{r.cost / rel:.3f}x"
        ag = uni.get(r.term.removesuffix(" [fd]"))
        ag_s = "-" if ag is None or ag == 0 else f"{r.cost / ag:.3f}x"
        lines.append(f"| {r.term} | {r.proposal} | {r.variance:.3e} | {r.seconds:.4f} "
                     f"| {r.cost:.3e} | {rel_s} | {ag_s} |")
    return "\n".join(lines)

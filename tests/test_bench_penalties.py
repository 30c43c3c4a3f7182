"""`scorefpe.training.bench`: the anchor-style rows compute what scorefpe computes, the fd rows
report their error, floors and speed-ups are wired, the phase profile and the variance table
run (tiny U-Net, CPU)."""

from __future__ import annotations

import math

from scorefpe.penalties import Estimator, Penalty
from scorefpe.training.bench import (
    BenchVariant,
    bench_penalties,
    default_variants,
    format_profile,
    format_table,
    format_variance_table,
    gradient_variance,
    profile_fp_step,
    speedups,
)


def test_bench_rows_anchor_check_errors_floors_and_speedups():
    variants = default_variants(4, 2)
    labels = [v.label for v in variants]
    for want in ("dsm", "dsm+div [fd]", "dsm+fp [fd]", "anchor dsm+fp", "floor: dsm on 6B",
                 "dsm+jac (sub-batch 2)"):
        assert want in labels
    rows = bench_penalties(variants, batch=4, repeats=1, width=0.125, device="cpu")
    by = {r.variant.label: r for r in rows}
    # The anchor rows carry scorefpe-autograd vs anchor on the same probes: round-off only.
    for p in ("div", "jac", "fp"):
        assert abs(by[f"anchor dsm+{p}"].error) < 1e-5
    # fd rows: their error against autograd on the same probes, O(h) per probe.
    assert abs(by["dsm+div [fd]"].error) < 1e-2 and abs(by["dsm+jac [fd]"].error) < 1e-2
    assert abs(by["dsm+fp [fd]"].error) < 1e-1
    assert by["dsm+div [fd]"].variant.rows == 2 and by["dsm+fp [fd]"].variant.rows == 6
    ups = speedups(rows)
    assert set(ups) == {"dsm+div", "dsm+jac", "dsm+fp", "dsm+div [fd]", "dsm+jac [fd]", "dsm+fp [fd]"}
    assert all(math.isfinite(v) and v > 0 for v in ups.values())
    table = format_table(rows)
    assert "| floor: dsm on 2B |" in table and "speed-up vs anchor" in table
    # The fd estimators keep no VJP graph: they save what a DSM step on their rows saves.
    assert by["dsm+div [fd]"].saved_bytes == by["floor: dsm on 2B"].saved_bytes
    assert by["dsm+div [fd]"].saved_bytes < by["dsm+div"].saved_bytes


def test_profile_and_variance_table_run():
    prof = profile_fp_step(batch=4, repeats=1, width=0.125, device="cpu")
    assert set(prof) == {"dsm", "fp", "fp [fd]"}
    assert "double backward for grad_x L" in prof["fp"] and prof["fp"]["total"] > 0
    assert "x DSM" in format_profile(prof)
    rows = gradient_variance([(Penalty.NONE, Estimator.AUTOGRAD), (Penalty.DIV, Estimator.FD)],
                             ("uniform", "log-mixture"), batch=4, draws=3, width=0.125, device="cpu")
    assert {(r.term, r.proposal) for r in rows} == {
        ("dsm", "uniform"), ("dsm", "log-mixture"), ("dsm+div [fd]", "uniform"),
        ("dsm+div [fd]", "log-mixture")}
    assert all(math.isfinite(r.variance) and r.variance > 0 and r.seconds > 0 for r in rows)
    assert "cost vs uniform t" in format_variance_table(rows)


def test_variant_labels_keep_the_old_spellings():
    assert BenchVariant(Penalty.NONE).label == "dsm"
    assert BenchVariant(Penalty.FP, 8).label == "dsm+fp (sub-batch 8)"
    assert BenchVariant(Penalty.DIV, anchor=True).label == "anchor dsm+div"
    assert BenchVariant(Penalty.NONE, replicate=3).label == "floor: dsm on 3B"

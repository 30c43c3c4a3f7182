"""The lambda scan of docs/results/mnist_cpu_tradeoff.md section 5 as a markdown table: one row per
(loss, lambda, grad clip) from every eval.json under /work/runs/s21/scan/<level>/<loss>-s0 (the
scan's run directories on the machine that made them). python3 scripts/lambda_scan_table.py
"""
import json, glob, os
rows = []
for f in sorted(glob.glob("/work/runs/s21/scan/*/*-s0/eval.json")):
    level, run = f.split("/")[-3:-1]
    loss = run.split("-")[0]
    cfg = json.load(open(os.path.join(os.path.dirname(f), "config.json")))
    r = json.load(open(f))
    lam = cfg["penalty"]["lam"]
    clip = cfg.get("train", {}).get("grad_clip")
    nll = r.get("nll") or {}
    rows.append((loss, lam, clip, level, r["fid"], r["density"], r["coverage"], r.get("entropy_nats"),
                 nll.get("bpd"), (r.get("time_per_epoch") or {}).get("mean_s")))
seen = set()
print("| loss | lambda | grad clip | FID (n = 2,000) | density | coverage | entropy (nats) | NLL bits/dim | s per epoch | run |")
print("|---|---|---|---|---|---|---|---|---|---|")
for loss, lam, clip, level, fid, dens, cov, ent, bpd, tpe in sorted(rows, key=lambda r: (["none","fp","sn","jac","div"].index(r[0]), r[1], r[2] or 0)):
    if (loss, lam, clip) in seen:
        continue
    seen.add((loss, lam, clip))
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    print(f"| {loss} | {lam:g} | {clip or 'none'} | {fid:.1f} | {dens:.3f} | {cov:.3f} | {f(ent, '.3f')} | {f(bpd, '.2f')} | {f(tpe, '.0f')} | {level}/{loss}-s0 |")

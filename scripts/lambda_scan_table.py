"""The lambda and clipping scans of docs/results/mnist_cpu_tradeoff.md (sections 5 and 6) as one
markdown table: a row per (loss, lambda, grad clip) from every ROOT/<level>/<loss>-s0/eval.json
(the scans' run directories on the machine that made them), with the mean DSM term of the last
epoch and the share of steps whose gradient norm was clipped (from metrics.jsonl; "-" where the
run predates that log). A run found under several levels (a copied baseline) is listed once.

    python3 scripts/lambda_scan_table.py [ROOT ...]   # default: /work/runs/s21/scan
"""
import glob
import json
import os
import sys

roots = sys.argv[1:] or ["/work/runs/s21/scan"]
rows = []
for root in roots:
    for f in sorted(glob.glob(os.path.join(root, "*", "*-s0", "eval.json"))):
        d = os.path.dirname(f)
        level, run = f.split("/")[-3:-1]
        loss = run.split("-")[0]
        cfg = json.load(open(os.path.join(d, "config.json")))
        r = json.load(open(f))
        epochs = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
        epochs = [e for e in epochs if e.get("kind") == "epoch"]
        last = epochs[-1] if epochs else {}
        clipped = [e.get("clipped_steps") for e in epochs]
        share = (sum(clipped) / sum(e["steps"] for e in epochs)
                 if epochs and all(c is not None for c in clipped) else None)
        nll = r.get("nll") or {}
        rows.append(dict(loss=loss, lam=cfg["penalty"]["lam"], clip=cfg["train"].get("grad_clip"),
                         where=f"{os.path.basename(root.rstrip('/'))}/{level}/{run}", fid=r["fid"],
                         dens=r["density"], cov=r["coverage"], ent=r.get("entropy_nats"),
                         bpd=nll.get("bpd"), dsm=(last.get("terms_mean") or {}).get("dsm"),
                         share=share))


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


order = ["none", "fp", "sn", "jac", "div"]
print("| loss | lambda | grad clip | FID (n = 2,000) | density | coverage | entropy (nats) "
      "| NLL bits/dim | DSM term, last epoch | steps clipped | run |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
seen = set()
for r in sorted(rows, key=lambda r: (order.index(r["loss"]), r["lam"], r["clip"] or 0)):
    key = (r["loss"], r["lam"], r["clip"])
    if key in seen:
        continue
    seen.add(key)
    print(f"| {r['loss']} | {r['lam']:g} | {fmt(r['clip'], 'g') if r['clip'] else 'none'} "
          f"| {r['fid']:.1f} | {r['dens']:.3f} | {r['cov']:.3f} | {fmt(r['ent'], '.3f')} "
          f"| {fmt(r['bpd'], '.2f')} | {fmt(r['dsm'], '.1f')} "
          f"| {fmt(None if r['share'] is None else 100 * r['share'], '.1f')}"
          f"{'' if r['share'] is None else ' %'} | {r['where']} |")

"""The bad-input audit of docs/reliability.md: run every case of tests/test_cli_contract.py on
some checkout of scorefpe and record what happened, or render two such records as the table.

    PYTHONPATH=CHECKOUT python3 scripts/cli_audit.py run old|new OUT.json [LIMIT_S]
    python3 scripts/cli_audit.py render BEFORE.json AFTER.json FIXES.json > table.md

``run`` loads the cases from this file's checkout and the CLI from PYTHONPATH's; ``old``
translates the new option spellings back to the old ones (an old checkout has only those).
A case still computing after LIMIT_S seconds (default 15) is recorded as accepted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
OLD = [  # (command prefix, new spelling, old spelling)
    ("bench penalties", "--md", "--out"), ("bench penalties", "--batch-size", "--batch"),
    ("report", "--md", "--out"), ("lenet train", "--weights", "--out"),
    ("lenet eval", "--weights", "--model"), ("sample", "--n-samples", "--n"),
    ("sample", "--sampler-steps", "--steps"), ("sample", "--npy", "--out"), ("experiment table1", "--sampler-steps", "--steps"),
    ("diagnose", "--png", "--out"), ("diagnose", "--n-points", "--points"),
    ("experiment lambda-sweep", "--n-points", "--points"), ("likelihood", "--n-points", "--n"),
]


class _Slow(BaseException):
    pass


def _alarm(*_: object) -> None:
    raise _Slow()


def run(mode: str, out_path: str, limit: int = 15) -> None:
    if mode == "old":  # a checkout before issue 17's layout has its CLI in a top-level `cli`
        import cli
        import cli.main

        sys.modules["scorefpe.cli"], sys.modules["scorefpe.cli.main"] = cli, cli.main
    spec = importlib.util.spec_from_file_location("tc", HERE / "tests/test_cli_contract.py")
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    from click.testing import CliRunner

    signal.signal(signal.SIGALRM, _alarm)
    res: dict[str, dict] = {}
    for cid, args, needle, setup in tc.CASES:
        if mode == "old":
            for pre, new, old in OLD:
                if args.startswith(pre):
                    args = re.sub(rf"(?<!\S){re.escape(new)}(?!\S)", old, args)
                    needle = old if needle == new else needle
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            ws = tc._workspace(tmp, setup)
            os.environ["SCOREFPE_CACHE"] = ws["CACHE"]
            before = tc._snapshot(tmp)
            signal.alarm(limit)
            try:
                r = CliRunner().invoke(tc.main, args.format(**ws).split())
                signal.alarm(0)
            except _Slow:
                res[cid] = {"args": args, "outcome": f"accepted: still computing after {limit} s",
                            "error": ""}
                continue
            out = r.output
            tb = "Traceback" in out or (r.exception is not None
                                        and not isinstance(r.exception, SystemExit))
            errs = [ln for ln in out.splitlines() if ln.startswith("Error:")]
            wrote = tc._snapshot(tmp) != before
            named = len(errs) == 1 and needle in errs[0]
            if "No such option" in out:
                what = "option did not exist"
            elif tb:
                what = f"exit {r.exit_code}, traceback ({type(r.exception).__name__})"
            elif r.exit_code == 2 and named and not wrote:
                what = "as promised"
            else:
                what = (f"exit {r.exit_code}" + ("" if named else ", value not named")
                        + (", wrote files" if wrote else ""))
            if tb:
                last = f"{type(r.exception).__name__}: {r.exception}"
            else:
                last = errs[0] if errs else (out.strip().splitlines() or [""])[-1]
            res[cid] = {"args": args, "outcome": what, "error": last[:150]}
        print(cid, res[cid]["outcome"], flush=True)
        Path(out_path).write_text(json.dumps(res, indent=1))
    Path(out_path).write_text(json.dumps(res, indent=1))


def render(before_path: str, after_path: str, fixes_path: str) -> None:
    spec = importlib.util.spec_from_file_location("tc", HERE / "tests/test_cli_contract.py")
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    before = json.loads(Path(before_path).read_text())
    after = json.loads(Path(after_path).read_text())
    fixes = json.loads(Path(fixes_path).read_text())  # {case id prefix or id: commit}
    print("| # | command | bad input | before (a5fd9bf) | now | fixed by | test id |")
    print("|---|---|---|---|---|---|---|")
    for i, (cid, args, needle, setup) in enumerate(tc.CASES, 1):
        words = args.split()
        n_cmd = 2 if words[0] in ("train", "data", "bench", "benchmark", "lenet", "experiment") else 1
        cmd = " ".join(words[:n_cmd])
        bad = " ".join(words[n_cmd:]) + (f" (cache: {setup.replace('_', ' ')})" if setup else "")
        b = before.get(cid, {"outcome": "(command added after a5fd9bf)", "error": ""})
        was = b["outcome"]
        if was != "as promised" and b.get("error"):
            err = re.sub(r"/tmp/[^/\s']+/", ".../", b["error"])
            err = err[len("Error: "):] if err.startswith("Error: ") else err
            was += ": " + (err if len(err) <= 100 else err[:99] + "…")
        was = was.replace("|", "\\|").replace("`", "'")
        fix = "" if b["outcome"] == "as promised" else fixes.get(cid, fixes.get("*", ""))
        fix = "" if cid not in before else fix
        now = after.get(cid, {}).get("outcome", "not run")
        print(f"| {i} | `{cmd}` | `{bad}` | {was} | {now} | {fix} | `{cid}` |")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], *(int(x) for x in sys.argv[4:5]))
    else:
        render(*sys.argv[2:5])

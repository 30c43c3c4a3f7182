#!/usr/bin/env bash
# Table I of the 2026 paper (`scorefpe experiment table1 --preset paper`) on a GPU, in chunks of
# under 10 minutes, each resuming where the last one stopped. Never needed by the tests.
#
# Usage (from the repository root):
#   scripts/gpu_table1.sh RUN_DIR [CHUNK_SECONDS [CHUNKS]] [-- extra `experiment table1` options]
#
#   RUN_DIR        the experiment directory (created, or resumed when it exists). Put it under a
#                  git-ignored folder of the checkout (e.g. runs/table1_paper: /runs/ is ignored)
#                  so that a session can carry it to the GPU machine and fetch it back.
#   CHUNK_SECONDS  wall-clock limit of one chunk (default 540 = 9 min); a chunk that reaches it
#                  is stopped by SIGINT and the next chunk resumes.
#   CHUNKS         how many chunks this call runs (default 1): one device call per chunk keeps
#                  every call under the 10-minute limit.
#   after --       passed to `scorefpe experiment table1`, e.g. `--epochs 20 --seeds 3` (the
#                  documented reduction: the paper's 200 epochs x 15 runs take about
#                  15 x 375,000 steps, many GPU hours), `--lam fp=1e-3,sn=1e-2`, `--n-samples`.
#
# Environment: DATA_DIR (MNIST IDX files, default runs/mnist beside RUN_DIR's checkout; the GPU
# machine reaches nothing outside, so carry the files: `cp /work/cache/mnist/* runs/mnist/`),
# PRESET (default paper; `tiny` to try the script on a CPU in a minute), PYTHON (default python3),
# SLIM=1 (delete samples.npy of runs whose eval.json is written, to keep RUN_DIR small).
#
# With a lent GPU (the `run` tool of a session; 15 minutes of device time in all):
#   1. here:   mkdir -p runs/mnist && cp /work/cache/mnist/* runs/mnist/
#   2. device: run(command="SLIM=1 scripts/gpu_table1.sh runs/table1_paper 480 1 -- --epochs 20",
#                  carry=["runs/mnist", "runs/table1_paper"], timeout_s=560)
#      then copy runs/table1_paper back from the device ($OUT, see below) and repeat step 2 in
#      the next session; every chunk skips finished trainings and evaluations and resumes a
#      killed training from its last checkpoint (checkpoint_every 5,000 steps: at most a few
#      minutes of work is lost per chunk).
#   3. To bring RUN_DIR back, set OUT_COPY=$OUT: the script then copies RUN_DIR (without
#      samples.npy when SLIM=1) under $OUT after the chunk. The width-1 U-Net's checkpoint.pt
#      is about 18 MB per run (weights, EMA, Adam moments): carry at most 3 runs' checkpoints at
#      once under the 64 MiB limit, or finish runs (marker + eval.json) before carrying back.
#
# Exit status: 0 when Table I is complete (RUN_DIR/table1.md written with every run), 3 when
# the chunks ran out first (call again), anything else is the CLI's error (2: bad input).
set -u -o pipefail

if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
RUN_DIR=$1; shift
CHUNK=540
CHUNKS=1
if [ $# -gt 0 ] && [ "$1" != "--" ]; then CHUNK=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then CHUNKS=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi
case "$CHUNK$CHUNKS" in *[!0-9]*|'') echo "CHUNK_SECONDS and CHUNKS must be integers" >&2; exit 2;; esac
if [ "$CHUNK" -lt 30 ] || [ "$CHUNK" -gt 590 ]; then
  echo "CHUNK_SECONDS must lie in 30..590 (a device call is limited to 600 s), got $CHUNK" >&2
  exit 2
fi

PY=${PYTHON:-python3}
PRESET=${PRESET:-paper}
DATA_DIR=${DATA_DIR:-runs/mnist}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
data_opt=()
if [ -d "$DATA_DIR" ]; then data_opt=(--data-dir "$DATA_DIR"); fi

"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' >&2

status=3
for ((i = 1; i <= CHUNKS; i++)); do
  echo "[gpu_table1] chunk $i/$CHUNKS, at most ${CHUNK} s, $(date -u +%H:%M:%S) UTC" >&2
  # SIGINT first (the CLI stops cleanly; checkpoints and result files are written atomically),
  # SIGKILL 20 s later if it does not stop.
  timeout -s INT -k 20 "$CHUNK" "$PY" -m scorefpe.cli experiment table1 --preset "$PRESET" \
    --out "$RUN_DIR" "${data_opt[@]}" "$@"
  rc=$?
  if [ $rc -eq 0 ]; then status=0; break; fi
  if [ $rc -ne 124 ] && [ $rc -ne 130 ] && [ $rc -ne 137 ]; then status=$rc; break; fi
  echo "[gpu_table1] chunk $i stopped at the time limit (exit $rc); the next one resumes" >&2
done

if [ "${SLIM:-0}" = "1" ] && [ -d "$RUN_DIR" ]; then
  for ev in "$RUN_DIR"/*/eval.json; do
    [ -f "$ev" ] && rm -f "$(dirname "$ev")/samples.npy"
  done
fi
if [ -n "${OUT_COPY:-}" ] && [ -d "$RUN_DIR" ]; then
  mkdir -p "$OUT_COPY" && cp -r "$RUN_DIR" "$OUT_COPY/"
fi
if [ $status -eq 0 ]; then
  echo "[gpu_table1] Table I complete: $RUN_DIR/table1.md" >&2
elif [ $status -eq 3 ]; then
  echo "[gpu_table1] not finished; call again with the same RUN_DIR to resume" >&2
fi
exit $status

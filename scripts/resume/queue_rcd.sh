#!/usr/bin/env bash
# The issue-21 training arms, one after another, one thread each (scripts/TRAINING-rcd.md).
# Resumable: rerun it; a run with <run>/DONE is skipped, one with <run>/ckpt.pt resumes.
# A STOP file in the running run's folder stops it (checkpoint written) and ends the queue.
#   ONLY: a bash regex; runs whose name does not match are skipped (two queues, one per core).
#   REPO: the repository (run folders under scripts/resume/); CODE: where the code is imported
#   from (default REPO; a frozen copy while the tree is edited); OUT: exports and logs.
set -u
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
CODE=${CODE:-$REPO}
OUT=${OUT:-$REPO/.work}
mkdir -p "$OUT"
COMMON=(--steps 1000 --lr 2e-4 --warmup 100 --batch 64 --eval-every 250 --eval-n 200 --ckpt-minutes 5
        --threads 1 --t-res-eval 1.0)

run() {
  local name=$1; shift
  local dir=$REPO/scripts/resume/$name
  [ -f "$dir/DONE" ] && return 0
  [ -n "${ONLY:-}" ] && [[ ! $name =~ $ONLY ]] && return 0
  mkdir -p "$dir"
  local resume=()
  [ -f "$dir/ckpt.pt" ] && resume=(--resume)
  echo "[$(date -u +%H:%M:%S)] start $name" >> "$OUT/queue.log"
  (cd "$CODE" && OMP_NUM_THREADS=1 PYTHONPATH="$CODE" python scripts/train_rcd.py --work "$dir" \
      --out "$OUT/$name" "${COMMON[@]}" "${resume[@]}" "$@") >> "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$(date -u +%H:%M:%S)] end $name rc=$rc" >> "$OUT/queue.log"
  [ $rc -eq 0 ] || exit $rc
  date -u > "$dir/DONE"
}

# Seed 0: the RCD arm, the control (a = 0, drafts withheld: the same for both arms, since drafts
# draw from their own generator), the bridge arm; then the second training seed.
run rcd-s0    --seed 0 --residual-scale 1 --eval-modes cold,rcd,rcd_other_row
run ctl-s0    --seed 0 --residual-scale 0 --draft-frac 0.8 --draft-alpha 0 \
              --eval-modes cold,rcd,rcd_other_row,embed,embed_shuffled,embed_near_miss
run bridge-s0 --seed 0 --residual-scale 0 --draft-frac 0.8 --draft-alpha 0.6 \
              --eval-modes cold,embed,embed_shuffled,embed_near_miss
run rcd-s1    --seed 1 --residual-scale 1 --eval-modes cold,rcd,rcd_other_row
run ctl-s1    --seed 1 --residual-scale 0 --draft-frac 0.8 --draft-alpha 0 \
              --eval-modes cold,rcd,rcd_other_row,embed,embed_shuffled,embed_near_miss
run bridge-s1 --seed 1 --residual-scale 0 --draft-frac 0.8 --draft-alpha 0.6 \
              --eval-modes cold,embed,embed_shuffled,embed_near_miss

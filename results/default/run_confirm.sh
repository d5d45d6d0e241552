#!/usr/bin/env bash
# Issue 24's default, step 2: the rule chosen on the development seeds (spec, tau_accept 0.1),
# confirmed on six other fresh seeds (make-data --seed 4001..4006 --n 300), paired with cold, the
# previous default (chain rel 0.2) beside it. Batch 16, one thread, embedded models. A finished file
# is skipped, a partial one resumes. Then: python scripts/paired_compare.py \
#   results/default/confirm_*.json --baseline confirm:cold
set -eu
cd "$(dirname "$0")/../.."
for s in ${SEEDS:-4001 4002 4003 4004 4005 4006}; do
  data=results/data/seed$s.jsonl
  [ -f "$data" ] || python -m fastdllm_warmstart.cli make-data --seed "$s" --n 300 --out "$data"
  out=results/default/confirm_seed$s.json
  [ -f "$out" ] && continue
  resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
  OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset results/default/preset_confirm.json \
      --data "$data" --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}"
done

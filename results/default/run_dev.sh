#!/usr/bin/env bash
# Issue 24's default, step 1: the candidate rules on the development seeds (the seven data sets the
# README measured before: results/data/{fresh2026,fresh2027,seed5,seed99,seed31337,seed123456,
# seed8675309}.jsonl, 300 problems each), paired with cold. Batch 16, one thread, embedded models.
# PRESET / PREFIX: another preset and file prefix (run_dev_wino.sh). A finished file is skipped, a
# partial one resumes. Then: python scripts/paired_compare.py \
#   results/default/dev_*.json --baseline dev:cold
set -eu
cd "$(dirname "$0")/../.."
for d in ${DATA:-fresh2026 fresh2027 seed5 seed99 seed31337 seed123456 seed8675309}; do
  out=results/default/${PREFIX:-dev}_$d.json
  [ -f "$out" ] && continue
  resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
  OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset ${PRESET:-results/default/preset_candidates.json} \
      --data results/data/$d.jsonl --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}"
done

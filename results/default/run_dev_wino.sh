#!/usr/bin/env bash
# Issue 24's default, the rule finally adopted: the aux draft as WINO's wide-in (tau_in 0.6, tau_out
# 0.9, the best point of the peers sweep on seed 5001) and WINO alone, on the seven development seeds
# of run_dev.sh, paired with cold, with the preset of the confirmation (preset_confirm_wino.json).
# A finished file is skipped, a partial one resumes. Then: python scripts/paired_compare.py \
#   results/default/devwino_*.json --baseline devwino:cold --out results/default/devwino_paired.json
set -eu
cd "$(dirname "$0")/../.."
for d in ${DATA:-fresh2026 fresh2027 seed5 seed99 seed31337 seed123456 seed8675309}; do
  out=results/default/devwino_$d.json
  [ -f "$out" ] && continue
  resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
  OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset results/default/preset_confirm_wino.json \
      --data results/data/$d.jsonl --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}"
done

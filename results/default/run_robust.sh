#!/usr/bin/env bash
# The default rule (wino) and the previous ones against bad drafts, on the base model and the four
# data sets of issue 21's bench (1200 paired problems): near-miss drafts (the reference answer
# reworded with one wrong result, results/data/nearmiss_*.jsonl, made by make-data --drafts reworded
# --drafts-wrong 1.0) and the aux's drafts shuffled across problems (drafts for the wrong problem).
# Then: python scripts/paired_compare.py results/default/robust_near_*.json --baseline robust_near:cold
#       python scripts/paired_compare.py results/default/robust_shuf_*.json --baseline robust_shuf:cold
set -eu
cd "$(dirname "$0")/../.."
for d in fresh2026 fresh2027 seed5 seed99; do
  for kind in near shuf; do
    out=results/default/robust_${kind}_$d.json
    [ -f "$out" ] && continue
    resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
    extra=(--proposals results/data/nearmiss_$d.jsonl); [ $kind = shuf ] && extra=(--shuffle-proposals 0)
    OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset results/default/preset_robust.json \
        --data results/data/$d.jsonl --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}" "${extra[@]}"
  done
done

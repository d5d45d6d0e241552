#!/usr/bin/env bash
# Issue 24: the best point of the peers sweep (results/sweep_peers.jsonl, seed 5001: the aux draft as
# WINO's wide-in, tau_in 0.6, tau_out 0.9) and WINO's own best accuracy point (tau_in 0.3, tau_out 0.7),
# confirmed on the six fresh seeds of the default's confirmation (make-data --seed 4001..4006),
# paired with cold. Then: python scripts/paired_compare.py results/default/wino_*.json --baseline wino:cold
set -eu
cd "$(dirname "$0")/../.."
for s in ${SEEDS:-4001 4002 4003 4004 4005 4006}; do
  out=results/default/wino_seed$s.json
  [ -f "$out" ] && continue
  resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
  OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset results/default/preset_confirm_wino.json \
      --data results/data/seed$s.jsonl --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}"
done

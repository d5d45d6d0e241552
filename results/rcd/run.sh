#!/usr/bin/env bash
# Issue 21's bench: every candidate of scripts/resume/queue_rcd.sh against the shipped base and its
# a = 0 control, on 4 fresh seeds x 300 problems (1200 paired problems), dual cache, threshold 0.9,
# batch 16, one thread. Rerun to add candidates as they finish; a finished file is skipped, a
# partial one resumes. Candidates are exported model folders (queue OUT, default .work/<run>).
#   results/rcd/run.sh base                     the base, cold
#   results/rcd/run.sh stream <name> <model>    residual stream off / on (T_res 1.0)
#   results/rcd/run.sh bridge <name> <model>    cold / embed 0.6 / embed+remask / token+remask
# then: python scripts/paired_compare.py results/rcd/*.json (see docs/rcd.md)
set -eu
cd "$(dirname "$0")/../.."
DATA="fresh2026 fresh2027 seed5 seed99"
kind=$1; name=${2:-base}; model=${3:-embedded:tiny-dllm}
case $kind in
  base)   preset=results/rcd/preset_stream.json; modes=(--modes stream_off) ;;
  stream) preset=results/rcd/preset_stream.json; modes=() ;;
  bridge) preset=results/rcd/preset_bridge.json; modes=() ;;
  *) echo "usage: $0 base | stream NAME MODEL | bridge NAME MODEL" >&2; exit 2 ;;
esac
for d in $DATA; do
  out=results/rcd/${kind}_${name}_${d}.json
  [ -f "$out" ] && continue
  resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
  OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset "$preset" "${modes[@]}" --model "$model" \
      --data results/data/$d.jsonl --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}"
done

#!/usr/bin/env bash
# Issue 21's bench: every candidate of scripts/resume/queue_rcd.sh against the shipped base and its
# a = 0 control, on 4 fresh seeds x 300 problems (1200 paired problems), dual cache, threshold 0.9,
# batch 16, one thread. Rerun to add candidates as they finish; a finished file is skipped, a
# partial one resumes. Candidates are exported model folders (queue OUT, default .work/<run>).
#   results/rcd/run.sh base                     the base, cold
#   results/rcd/run.sh stream <name> <model>    residual stream off / on (T_res 1.0)
#   results/rcd/run.sh bridge <name> <model>    cold / embed 0.6 / embed+remask / token+remask, from
#       the aux's drafts (bridge_*), drafts shuffled across problems (bridgeshuf_*) and near-miss
#       drafts: the reference answer reworded with one wrong result (bridgenear_*, made by make-data)
# then: python scripts/paired_compare.py results/rcd/*.json (see docs/rcd.md)
set -eu
cd "$(dirname "$0")/../.."
DATA=${DATA:-"fresh2026 fresh2027 seed5 seed99"}  # a subset, e.g. to run two benches side by side
kind=$1; name=${2:-base}; model=${3:-embedded:tiny-dllm}
case $kind in
  base)   preset=results/rcd/preset_stream.json; modes=(--modes stream_off) ;;
  stream) preset=results/rcd/preset_stream.json; modes=() ;;
  bridge) preset=results/rcd/preset_bridge.json; modes=() ;;
  *) echo "usage: $0 base | stream NAME MODEL | bridge NAME MODEL" >&2; exit 2 ;;
esac
declare -A seed_of=([fresh2026]=2026 [fresh2027]=2027 [seed5]=5 [seed99]=99)
bench() {  # <file prefix> <data set> [extra bench flags]
  local out=results/rcd/$1_${name}_$2.json; local d=$2; shift 2
  [ -f "$out" ] && return 0
  local resume=(); [ -f "${out%.json}.partial.jsonl" ] && resume=(--resume)
  OMP_NUM_THREADS=1 python -m fastdllm_warmstart.cli bench --preset "$preset" "${modes[@]}" --model "$model" \
      --data results/data/$d.jsonl --threads 1 --batch-size 16 --json "$out" --quiet "${resume[@]}" "$@"
}
for d in $DATA; do
  bench "$kind" "$d"
  if [ "$kind" = bridge ]; then
    bench bridgeshuf "$d" --shuffle-proposals 0
    near=results/data/nearmiss_$d.jsonl  # the same problems as results/data/$d.jsonl
    mkdir -p .work
    [ -f "$near" ] || python -m fastdllm_warmstart.cli make-data --seed "${seed_of[$d]}" --n 300 \
        --out .work/$d.jsonl --drafts-out "$near" --drafts reworded --drafts-wrong 1.0
    bench bridgenear "$d" --proposals "$near"
  fi
done

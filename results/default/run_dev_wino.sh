#!/usr/bin/env bash
# Issue 24: the aux draft as WINO's wide-in (tau_in 0.6, tau_out 0.9, the best point of the peers
# sweep on seed 5001) and WINO alone, on the seven development seeds of run_dev.sh, paired with
# cold, with the confirmation's preset. Then: python scripts/paired_compare.py \
#   results/default/devwino_*.json --baseline devwino:cold --out results/default/devwino_paired.json
PRESET=results/default/preset_confirm_wino.json PREFIX=devwino exec bash "$(dirname "$0")/run_dev.sh"

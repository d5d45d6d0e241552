#!/usr/bin/env bash
# Add fastdllm-warmstart's hook files to an unmodified Fast-dLLM checkout.
#
#   patches/apply.sh /path/to/Fast-dLLM            # apply
#   patches/apply.sh /path/to/Fast-dLLM --revert   # remove the added files again
#
# The patch only adds llada/warmstart_hook.py, llada/eval_llada_warmstart.py and
# dream/eval_dream_warmstart.py (or v1/... for the newer layout); no upstream file is touched.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
patch_file="$here/fastdllm-warmstart.patch"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 FAST_DLLM_CHECKOUT [--revert]" >&2
    exit 2
fi
checkout="$1"
mode="${2:-apply}"
case "$mode" in
    apply|--revert) ;;
    *) echo "error: unknown option '$mode' (expected --revert)" >&2; exit 2 ;;
esac

if [ -f "$checkout/llada/generate.py" ]; then
    prefix=""
elif [ -f "$checkout/v1/llada/generate.py" ]; then
    prefix="v1"
else
    echo "error: $checkout is not a Fast-dLLM checkout (no llada/generate.py or v1/llada/generate.py)" >&2
    exit 2
fi
target="$checkout${prefix:+/$prefix}"

reverse=()
[ "$mode" = "--revert" ] && reverse=(-R)

if command -v git >/dev/null 2>&1; then
    # --unidiff-zero: the hunks are pure additions without context lines.
    git -C "$target" apply --unidiff-zero ${reverse[@]+"${reverse[@]}"} --check "$patch_file"
    git -C "$target" apply --unidiff-zero ${reverse[@]+"${reverse[@]}"} "$patch_file"
else
    patch -p1 -d "$target" --forward ${reverse[@]+"${reverse[@]}"} < "$patch_file"
fi

if [ "$mode" = "--revert" ]; then
    echo "Removed fastdllm-warmstart's hook files from $target/llada and $target/dream."
else
    echo "Added $target/llada/warmstart_hook.py, $target/llada/eval_llada_warmstart.py and $target/dream/eval_dream_warmstart.py."
fi

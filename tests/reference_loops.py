"""Test oracle: a deliberately literal, unoptimised restatement of Fast-dLLM's decoding rules.

Written by us from the semantics of upstream's ``generate`` / ``generate_with_prefix_cache`` /
``generate_with_dual_cache`` (batch of one), with explicit loops and per-position Python code,
so that it shares no code path with the engine it checks. Used by the parity tests and as the
"plain loop" of ``scripts/bench_overhead.py``.

Two loop variants:

* ``current`` (today's upstream): a cached loop asks "is any position of the block still
  masked?" *before* each cached forward, so a block that the full forward completes costs one
  forward.
* ``snapshot-2025-06`` (the June-2025 release): a cached loop runs its cached forward first and
  asks afterwards, so every block costs at least two forwards with a cache.

Three commit rules: the fixed schedule (``threshold`` and ``factor`` None), the threshold rule and
the factor rule (``factor`` set; it wins over ``threshold``, as upstream).
"""

from __future__ import annotations

import torch

VARIANTS = ("current", "snapshot-2025-06")


def _schedule(n_masked: int, steps: int):
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _ranked(logits_row, masked_cols):
    """[(confidence, col, token)] of the masked columns, most confident first."""
    probs = torch.softmax(logits_row.double(), dim=-1)
    cands = []
    for c in masked_cols:
        tok = int(torch.argmax(logits_row[c]))
        cands.append((float(probs[c, tok]), c, tok))
    cands.sort(key=lambda t: (-t[0], t[1]))
    return cands


def _how_many_by_factor(confidences, factor):
    """The factor rule's count, spelled out as upstream's loop over ranks does it."""
    m = len(confidences)
    bars = [-1.0] + [1 - factor / (n + 1) for n in range(2, m + 1)]
    stop = None
    for i in range(m):
        if confidences[i] < bars[i]:
            stop = i
            break
    if stop is None:  # nothing failed: the loop ended on the last rank
        stop = m - 1
    if stop == 0 or stop == m - 1:  # upstream's loop then takes one more (possibly all)
        stop += 1
    return stop


def _pick(logits_row, masked_cols, k, threshold, factor):
    """Return {col: token} to commit for one row: upstream's schedule / threshold / factor rule."""
    if not masked_cols:
        return {}
    cands = _ranked(logits_row, masked_cols)
    if factor is not None:
        chosen = cands[:_how_many_by_factor([c[0] for c in cands], factor)]
    elif threshold is None:
        chosen = cands[:k]
    else:
        chosen = [cands[0]] + [t for t in cands[1:] if t[0] >= threshold]
    return {c: tok for _, c, tok in chosen}


@torch.no_grad()
def reference_generate(model, prompt, *, steps, gen_length, block_length, threshold, cache, mask_id,
                       factor=None, variant="current"):
    """Returns (canvas (1, P+G), nfe)."""
    if variant not in VARIANTS:
        raise ValueError(variant)
    P = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id, dtype=torch.long)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    nfe = 0

    def k_at(sched, i):
        return sched[i] if (threshold is None and factor is None) else None

    def block_full(s, e):
        return all(int(x[0, c]) != mask_id for c in range(s, e))

    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        sched = _schedule(sum(int(x[0, c]) == mask_id for c in range(s, e)), per_block)
        if cache == "none":  # the same in both variants: forward, commit, stop when full
            i = 0
            while True:
                logits = model(x, use_cache=False).logits[0]
                nfe += 1
                masked = [c for c in range(s, e) if int(x[0, c]) == mask_id]
                for c, tok in _pick(logits, masked, k_at(sched, i), threshold, factor).items():
                    x[0, c] = tok
                i += 1
                if block_full(s, e):
                    break
            continue
        # cached variants: one full forward, then cached forwards until the block is full
        out = model(x, use_cache=True)
        nfe += 1
        masked = [c for c in range(s, e) if int(x[0, c]) == mask_id]
        for c, tok in _pick(out.logits[0], masked, k_at(sched, 0), threshold, factor).items():
            x[0, c] = tok
        past = out.past_key_values
        if cache == "prefix":
            past = [tuple(t[:, :, :s] for t in layer) for layer in past]
        replace = torch.zeros_like(x, dtype=torch.bool)
        replace[:, s:e] = True
        i = 1
        while True:
            if variant == "current" and block_full(s, e):
                break
            if cache == "prefix":
                logits = model(x[:, s:], past_key_values=past, use_cache=True).logits[0]
            else:
                res = model(x[:, s:e], past_key_values=past, use_cache=True, replace_position=replace)
                past = res.past_key_values
                logits = res.logits[0]
            nfe += 1
            masked = [c - s for c in range(s, e) if int(x[0, c]) == mask_id]
            k = k_at(sched, i) if i < len(sched) else 0  # only a full block runs out of schedule
            for c, tok in _pick(logits, masked, k, threshold, factor).items():
                x[0, c + s] = tok
            i += 1
            if variant == "snapshot-2025-06" and block_full(s, e):
                break
    return x, nfe

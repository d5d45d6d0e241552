"""Test oracle: a deliberately literal, unoptimised restatement of Fast-dLLM's decoding rules.

Written from the semantics of upstream's ``generate`` / ``generate_with_prefix_cache`` /
``generate_with_dual_cache`` (batch of one), with three explicit loops and per-position Python
code, so that it shares no code path with the engine it checks. Used by the parity tests and as
the "plain loop" of ``scripts/bench_overhead.py``.
"""

from __future__ import annotations

import torch


def _schedule(n_masked: int, steps: int):
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _pick(logits_row, x_row, masked_cols, k, threshold):
    """Return {col: token} to commit for one row: upstream's threshold / top-k rule."""
    if not masked_cols:
        return {}
    probs = torch.softmax(logits_row.double(), dim=-1)
    cands = []
    for c in masked_cols:
        tok = int(torch.argmax(logits_row[c]))
        cands.append((float(probs[c, tok]), c, tok))
    cands.sort(key=lambda t: (-t[0], t[1]))
    if threshold is None:
        chosen = cands[:k]
    else:
        chosen = [cands[0]] + [t for t in cands[1:] if t[0] >= threshold]
    return {c: tok for _, c, tok in chosen}


@torch.no_grad()
def reference_generate(model, prompt, *, steps, gen_length, block_length, threshold, cache, mask_id):
    """Returns (canvas (1, P+G), nfe)."""
    P = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id, dtype=torch.long)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    nfe = 0
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        sched = _schedule(sum(int(x[0, c]) == mask_id for c in range(s, e)), per_block)
        i = 0
        if cache == "none":
            while True:
                logits = model(x, use_cache=False).logits[0]
                nfe += 1
                masked = [c for c in range(s, e) if int(x[0, c]) == mask_id]
                for c, tok in _pick(logits, x[0], masked, sched[i] if threshold is None else None, threshold).items():
                    x[0, c] = tok
                i += 1
                if all(int(x[0, c]) != mask_id for c in range(s, e)):
                    break
            continue
        # cached variants: one full forward, then cached forwards until the block is full
        out = model(x, use_cache=True)
        nfe += 1
        masked = [c for c in range(s, e) if int(x[0, c]) == mask_id]
        for c, tok in _pick(out.logits[0], x[0], masked, sched[0] if threshold is None else None, threshold).items():
            x[0, c] = tok
        past = out.past_key_values
        if cache == "prefix":
            past = [tuple(t[:, :, :s] for t in layer) for layer in past]
        replace = torch.zeros_like(x, dtype=torch.bool)
        replace[:, s:e] = True
        i = 1
        while True:
            if cache == "prefix":
                logits = model(x[:, s:], past_key_values=past, use_cache=True).logits[0]
                offset = s
            else:
                res = model(x[:, s:e], past_key_values=past, use_cache=True, replace_position=replace)
                past = res.past_key_values
                logits = res.logits[0]
                offset = s
            nfe += 1
            masked = [c - offset for c in range(s, e) if int(x[0, c]) == mask_id]
            k = sched[i] if threshold is None else None
            for c, tok in _pick(logits, None, masked, k, threshold).items():
                x[0, c + offset] = tok
            if all(int(x[0, c]) != mask_id for c in range(s, e)):
                break
            i += 1
    return x, nfe

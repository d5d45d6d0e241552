"""The LLaDA SFT objective and the decoder-state objectives the tiny dLLM owes its accuracy to.

* :func:`mask_canvas` / :func:`masked_ce` / :func:`dllm_loss`: random masking (with the prefix-cut and
  equation-focus curricula), 1/t-weighted masked cross-entropy.
* :func:`dllm_cache_loss`: a block against the dual cache's stale context.
* :func:`teacher_forced_order` / :func:`dllm_decode_state_loss`: the states the dual-cache threshold
  decoder visits, commits teacher-forced.
* :func:`result_first_boost`: extra weight on the results of ``c = a op b`` equations.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .data import BLOCK_LENGTH, THRESHOLD


def result_first_boost(result_first: torch.Tensor, m: torch.Tensor, rf_weight: float) -> Optional[torch.Tensor]:
    """(B, L) loss multiplier over a canvas or block: ``rf_weight`` at the masked result ``c`` of a
    result-first equation (``c = a op b``, ``result_first`` from :func:`dllm_encode_batch`) whose
    ``=`` right after it is visible (unmasked), 1 elsewhere; None when ``rf_weight`` is 1.

    That wording asks for ``c`` before its operands may be on the canvas, and is the one the tiny
    dLLM gets wrong most often. Only positions whose wording the visible ``=`` already fixes are
    weighted: where ``c``'s position is still a choice between wordings (its number or the first
    operand), weighting the result-first answer would tilt the model towards that wording, not make
    it compute better (tried: it did). A column whose ``=`` lies outside the slice counts as masked."""
    if rf_weight == 1.0:
        return None
    if not rf_weight > 0:
        raise ValueError(f"rf_weight={rf_weight}: use a positive weight (1 = no boost)")
    eq_visible = torch.zeros_like(m)
    eq_visible[:, :-1] = ~m[:, 1:]
    return 1.0 + (rf_weight - 1.0) * (result_first & m & eq_visible).float()


def mask_canvas(batch, eos_id: int, gen: torch.Generator, prefix_frac: float = 0.0,
                eq_frac: float = 0.0, eps: float = 1e-3):
    """The LLaDA SFT corruption of a batch's answer canvas: per row ``t ~ U(eps, 1)`` (stratified
    over the batch), each canvas token masked with probability ``t``. A fraction ``prefix_frac`` of
    the rows only mask at or after a random cut in the answer (the states semi-autoregressive
    decoding visits); a fraction ``eq_frac`` gets equation-focused masking (:func:`_equation_focus`).
    Returns ``(t (B,), m (B, G) masked, forced (B, G) equation targets)``."""
    ids, P = batch["ids"], batch["P"]
    B = ids.shape[0]
    u = torch.rand((), generator=gen).item()
    t = ((u + torch.arange(B, dtype=torch.float32) / B) % 1.0)
    t = (eps + (1 - eps) * t)[torch.randperm(B, generator=gen)]
    canvas = ids[:, P:]
    m = torch.rand(canvas.shape, generator=gen) < t[:, None]
    if prefix_frac > 0:
        ans_len = (canvas.cpu() != eos_id).sum(1)  # answer tokens before the EOS tail
        cut = (torch.rand(B, generator=gen) * (ans_len + 1).float()).floor().long()
        rows = torch.rand(B, generator=gen) < prefix_frac
        eligible = torch.arange(canvas.shape[1])[None, :] >= cut[:, None]
        m = torch.where(rows[:, None], m & eligible, m)
    forced = torch.zeros_like(m)
    if eq_frac > 0:
        m, forced = _equation_focus(canvas.cpu(), batch["spans"], m, eq_frac, gen)
    return t.to(ids.device), m.to(ids.device), forced.to(ids.device)


def masked_ce(logits: torch.Tensor, canvas: torch.Tensor, t: torch.Tensor, m: torch.Tensor,
              forced: torch.Tensor, forced_weight: float = 2.0,
              boost: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy on masked canvas tokens weighted ``1/t`` (equation targets: ``forced_weight``),
    times ``boost`` (B, G) where given, divided by the number of canvas tokens. ``logits`` (B, G, V)
    over the canvas."""
    B, G = canvas.shape
    ce = F.cross_entropy(logits[m].float(), canvas[m], reduction="none")
    w = torch.where(forced, torch.full_like(t[:, None].expand_as(m), forced_weight),
                    (1.0 / t)[:, None].expand_as(m))
    if boost is not None:
        w = w * boost
    return (ce * w[m]).sum() / (B * G)


def dllm_loss(model, batch, mask_id: int, eos_id: int, gen: torch.Generator, prefix_frac: float = 0.0,
              eq_frac: float = 0.0, forced_weight: float = 2.0, eps: float = 1e-3,
              rf_weight: float = 1.0) -> torch.Tensor:
    """LLaDA SFT loss (:func:`mask_canvas` then :func:`masked_ce`; ``rf_weight``:
    :func:`result_first_boost`)."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    t, m, forced = mask_canvas(batch, eos_id, gen, prefix_frac, eq_frac, eps)
    canvas = ids[:, P:]
    xt = ids.clone()
    xt[:, P:] = torch.where(m, torch.full_like(canvas, mask_id), canvas)
    logits = model(xt, attention_mask=am).logits[:, P:]
    return masked_ce(logits, canvas, t, m, forced, forced_weight,
                     result_first_boost(batch["result_first"], m, rf_weight))


def stale_block_cache(model, ids: torch.Tensor, am: torch.Tensor, s: int, mask_id: int):
    """The dual cache at the start of a block at column ``s``: a forward without gradient over
    ``ids`` with everything from ``s`` on masked. Returns ``(past, logits)``; ``past`` is detached
    (constants, as at inference)."""
    ctx = ids.clone()
    ctx[:, s:] = mask_id
    with torch.no_grad():
        out = model(ctx, attention_mask=am, use_cache=True)
    return [tuple(x.detach() for x in layer) for layer in out.past_key_values], out.logits


def block_forward(model, xb: torch.Tensor, am: torch.Tensor, past, s: int) -> torch.Tensor:
    """Logits of the block ``xb`` (columns ``s`` to ``s + xb.shape[1]``) recomputed against the
    cache ``past``, replacing its own columns there (the dual cache's ``replace_position``)."""
    rp = torch.zeros_like(am, dtype=torch.bool)
    rp[:, s:s + xb.shape[1]] = True
    return model(xb, attention_mask=am, past_key_values=past, use_cache=True, replace_position=rp).logits


def dllm_cache_loss(model, batch, mask_id: int, eos_id: int, gen: torch.Generator,
                    block_length: int = BLOCK_LENGTH, eq_frac: float = 0.0, forced_weight: float = 2.0,
                    eps: float = 1e-3, rf_weight: float = 1.0) -> torch.Tensor:
    """The masked cross-entropy in the state a dual-cache decoding step is in (Fast-dLLM's dual
    cache: a block's later forwards recompute only the block against keys/values of the prompt,
    the earlier blocks and the still-masked later blocks taken at the block's first forward).

    One block ``b`` per batch: a no-grad forward over the canvas with everything from the block on
    masked gives the cache; the block, corrupted as :func:`mask_canvas` corrupts the canvas, is then
    run against it (``replace_position``), and the loss is taken on its masked positions. The
    cached keys/values are constants, as at inference; the model learns to predict from the stale
    context it is given there. Normalised by the block's token count."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    G = ids.shape[1] - P
    t, m, forced = mask_canvas(batch, eos_id, gen, 0.0, eq_frac, eps)
    b = int(torch.randint(G // block_length, (1,), generator=gen))
    s, e = P + b * block_length, P + (b + 1) * block_length
    past, _ = stale_block_cache(model, ids, am, s, mask_id)
    block, mb = ids[:, s:e], m[:, s - P:e - P]
    xb = torch.where(mb, torch.full_like(block, mask_id), block)
    logits = block_forward(model, xb, am, past, s)
    return masked_ce(logits, block, t, mb, forced[:, s - P:e - P], forced_weight,
                     result_first_boost(batch["result_first"][:, s - P:e - P], mb, rf_weight))


@torch.no_grad()
def teacher_forced_order(model, ids: torch.Tensor, am: torch.Tensor, s: int, e: int, mask_id: int, pad_id: int,
                         threshold: float = THRESHOLD):
    """Run Fast-dLLM's dual-cache threshold decoder over the block ``[s, e)`` of ``ids`` (everything
    before it as given, everything from it on masked) with every commit *teacher-forced*: a committed
    position receives ``ids``'s token, whatever the model predicted. The cache comes from the block's
    first forward over the whole canvas (:func:`stale_block_cache`); later forwards recompute the block
    only; each commits by the engine's own threshold rule (``engine.transfer``: mask and pad never
    win, every token at ``threshold`` or above and at least the most confident one).

    Returns ``(order, past)``: ``order`` (B, e - s), the forward (0-based) at which each position was
    committed, and the block's cache. Given the model's own decoding as ``ids``, ``order`` is exactly
    the decoder's trajectory (tested against the engine)."""
    from fastdllm_warmstart.engine.transfer import get_transfer_index, suppress_ids

    gold = ids[:, s:e]
    order = torch.full(gold.shape, -1, dtype=torch.long, device=ids.device)
    past, logits = stale_block_cache(model, ids, am, s, mask_id)
    logits = logits[:, s:e]
    still = torch.ones_like(gold, dtype=torch.bool)
    xb = torch.full_like(gold, mask_id)
    step = 0
    while True:
        _, commit = get_transfer_index(suppress_ids(logits, still, (mask_id, pad_id)), 0.0, "low_confidence",
                                       still, xb, None, threshold)
        order[commit] = step
        still &= ~commit
        if not still.any():
            return order, past
        step += 1
        xb = torch.where(still, torch.full_like(gold, mask_id), gold)
        logits = block_forward(model, xb, am, past, s)


def dllm_decode_state_loss(model, batch, mask_id: int, pad_id: int, gen: torch.Generator,
                           block_length: int = BLOCK_LENGTH, threshold: float = THRESHOLD,
                           states: int = 1, block_choice: str = "uniform",
                           rf_weight: float = 1.0) -> torch.Tensor:
    """The masked cross-entropy in the states the dual-cache threshold decoder itself visits.

    Random masking trains every mask pattern a little; the decoder, though, fills a block in the
    order of the model's own confidence, and a model that is sure of a token whose place depends on
    a wording not yet chosen commits it and derails the answer (the tiny dLLM decodes 87% of
    validation problems right one token at a time left to right, 65% with the threshold rule). Here,
    for one block, :func:`teacher_forced_order` runs the decoder with the reference answer's
    tokens forced in (every visited state is consistent with a valid answer); each row then takes
    the state before a random one of its forwards (``states`` such draws per row, batched: the
    replay, several no-grad forwards, is paid once for all of them), and the loss is the masked
    cross-entropy there against the same cache (weighted ``1/t`` by the block's masked fraction, as
    :func:`masked_ce`, averaged over the draws): exactly the predictions, and the confidences, the
    decoder reads.

    ``block_choice``: ``uniform`` over the canvas's blocks, or ``content``: in proportion to one plus
    the batch's answer tokens in the block (tokens other than the row's end-of-canvas filler, its
    last token), so that blocks holding only EOS filler, which the model fills in one forward, are
    rarely drawn."""
    if states < 1:
        raise ValueError(f"states={states}: draw at least one state per row")
    if block_choice not in ("uniform", "content"):
        raise ValueError(f"block_choice={block_choice!r}: use 'uniform' or 'content'")
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    G = ids.shape[1] - P
    B = ids.shape[0]
    n_blocks = G // block_length
    if block_choice == "uniform":
        b = int(torch.randint(n_blocks, (1,), generator=gen))
    else:
        canvas = ids[:, P:P + n_blocks * block_length]
        content = (canvas != ids[:, -1:]).view(B, n_blocks, block_length).sum((0, 2)).float()
        b = int(torch.multinomial((content + 1).cpu(), 1, generator=gen))
    s, e = P + b * block_length, P + (b + 1) * block_length
    order, past = teacher_forced_order(model, ids, am, s, e, mask_id, pad_id, threshold)
    n_steps = (order.amax(1) + 1).repeat(states)  # forwards the row's block took, per draw
    k = (torch.rand(states * B, generator=gen).to(ids.device) * n_steps).floor().long()
    mb = order.repeat(states, 1) >= k[:, None]  # masked in the state before forward k (its commits included)
    gold = ids[:, s:e].repeat(states, 1)
    xb = torch.where(mb, torch.full_like(gold, mask_id), gold)
    if states > 1:
        past = [tuple(x.repeat(states, 1, 1, 1) for x in layer) for layer in past]
    logits = block_forward(model, xb, am.repeat(states, 1), past, s)
    return masked_ce(logits, gold, mb.float().mean(1), mb, torch.zeros_like(mb),
                     boost=result_first_boost(batch["result_first"][:, s - P:e - P].repeat(states, 1), mb,
                                              rf_weight))


def _equation_focus(canvas: torch.Tensor, spans, m: torch.Tensor, frac: float, gen: torch.Generator):
    """Decode-state masking for a fraction of rows: for every other equation (any wording, see
    :func:`equation_spans`) reveal its operands and operator and mask its result c together with
    the next copy of c later in the answer (the next equation's operand, the closing sentence or
    the final number), so the row carries clean "compute c from a op b" targets, as threshold
    decoding needs."""
    B, G = canvas.shape
    m = m.clone()
    forced = torch.zeros_like(m)
    rows = (torch.rand(B, generator=gen) < frac).nonzero(as_tuple=True)[0].tolist()
    for r in rows:
        sp = spans[r]
        if not sp:
            continue
        parity = int(torch.randint(2, (1,), generator=gen))
        row = canvas[r].tolist()
        for k in range(parity, len(sp), 2):
            first, last, res = sp[k]
            m[r, first:last + 1] = False
            targets = [res]
            nxt = next((j for j in range(max(last, res) + 1, G) if row[j] == row[res]), None)
            if nxt is not None:
                targets.append(nxt)
            for pos in targets:
                m[r, pos] = True
                forced[r, pos] = True
    return m, forced

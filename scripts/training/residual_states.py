"""RCD's second stage and the embedding bridge, trained in the states the decoder visits.

The base was trained in three kinds of state (:mod:`.objectives`): random masks, a block against
the dual cache's stale context, and the states the dual-cache threshold decoder visits (a
teacher-forced replay). Here the same states carry *soft inputs* at still-masked positions:

* **RCD residuals** (arXiv 2601.22954): ``(1 - a) E[mask] + a D`` with ``D = p @ E`` over the
  target's embedding table and ``a = H(p) / log V``, ``p = softmax(z / t_train)`` from the *frozen
  reference*. In a decoder state the residual is the one inference would feed: state k of a block
  gets the reference's prediction from forward k - 1 of the replay (the reference decodes the
  replay, commits teacher-forced); the block's first state (and the cache) gets the reference's
  prediction from the previous block's full forward, none in block 0 (the stream's ``zeros`` start).
* **Aux-like drafts** (the bridge to ``--warm-init embed --alpha 0.6``): in a draft row every
  still-masked canvas position holds ``(1 - alpha) E[mask] + alpha E[draft]``, the draft being
  another wording of the answer, with one wrong result in some and written for another problem of
  the batch in others. Where a residual exists it replaces the draft, as at inference
  (``fastdllm_warmstart.residual.ResidualContext``).

Every random draw is made for the *global* batch (:class:`StepPlan`), and the forwards then run on a
slice of its rows, so that N processes on N slices (DDP) compute the same loss curve as one process
on the whole batch. Drafts draw from their own ``random.Random``: an arm with drafts and its control
without them see the same problems, masks and states.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from fastdllm_warmstart.engine.transfer import get_transfer_index, suppress_ids
from fastdllm_warmstart.tasks import tinygsm

from .data import BLOCK_LENGTH, GEN_LENGTH, THRESHOLD
from .objectives import block_forward, mask_canvas, masked_ce, result_first_boost

KINDS = ("decode", "cache", "random")


@dataclass(frozen=True)
class SoftInputConfig:
    """What the target reads at still-masked positions in training."""

    # Temperature of the reference's residual distribution in training (the paper: 1).
    t_train: float = 1.0
    # Multiplies a; 0 is the control arm (the same training, no residual reaches the input).
    residual_scale: float = 1.0
    # Fraction of rows whose still-masked positions carry an aux-like draft (0: no drafts drawn).
    draft_frac: float = 0.0
    # Weight of the draft at those positions: --alpha at inference; 0 withholds drafts (control).
    draft_alpha: float = 0.6
    # Drafts with one wrong result carried on (the tiny aux model is right on about half).
    draft_wrong: float = 0.5
    # Drafts written for another problem of the batch.
    draft_other: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.t_train <= 10.0:
            raise ValueError(f"t_train={self.t_train}: use a temperature in (0, 10]")
        for name in ("residual_scale", "draft_frac", "draft_alpha", "draft_wrong", "draft_other"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: use a value in [0, 1]")


@dataclass
class StepPlan:
    """Every random choice of one optimiser step, drawn for the global batch (rows sliced later)."""

    kind: str
    t: Optional[torch.Tensor] = None       # (B,) masking rate (random / cache)
    m: Optional[torch.Tensor] = None       # (B, G) masked canvas positions (random / cache)
    forced: Optional[torch.Tensor] = None  # (B, G) equation-focus targets
    block: int = 0                         # cache / decode: the block trained
    u: Optional[torch.Tensor] = None       # (S, B) decode: uniform draws that pick each state
    drafts: Optional[torch.Tensor] = None  # (B, G) draft ids, -1 where the row has none


def draft_ids(tok, problems: Sequence[dict], rng: random.Random, cfg: SoftInputConfig) -> Optional[torch.Tensor]:
    """(B, G) aux-like drafts laid on the canvas from its first column (-1: no draft in that row)."""
    if cfg.draft_frac == 0:
        return None
    rows = []
    for i, p in enumerate(problems):
        has = rng.random() < cfg.draft_frac
        other = rng.random() < cfg.draft_other and len(problems) > 1
        j = (i + 1 + rng.randrange(len(problems) - 1)) % len(problems) if other else i
        text = tinygsm.draft_answer(problems[j], rng, cfg.draft_wrong)
        ids = tok.encode(" " + text, add_special_tokens=False)[:GEN_LENGTH]
        ids = ids + [tok.eos_token_id] * (GEN_LENGTH - len(ids))
        rows.append(ids if has else [-1] * GEN_LENGTH)
    return torch.tensor(rows, dtype=torch.long)


def plan_step(batch, tok, problems, gen: torch.Generator, rng: random.Random, cfg: SoftInputConfig,
              decode_frac: float, cache_frac: float, prefix_frac: float, eq_frac: float,
              states: int) -> StepPlan:
    """Draw one step's kind and its randomness for the whole (global) batch, in a fixed order."""
    u = float(torch.rand(1, generator=gen)) if decode_frac + cache_frac > 0 else 1.0
    drafts = draft_ids(tok, problems, rng, cfg)
    B, G = batch["ids"].shape[0], GEN_LENGTH
    n_blocks = G // BLOCK_LENGTH
    if u < decode_frac:
        P = batch["P"]
        canvas = batch["ids"][:, P:P + n_blocks * BLOCK_LENGTH]
        content = (canvas != batch["ids"][:, -1:]).view(B, n_blocks, BLOCK_LENGTH).sum((0, 2)).float()
        b = int(torch.multinomial((content + 1).cpu(), 1, generator=gen))
        return StepPlan("decode", block=b, u=torch.rand(states * B, generator=gen).view(states, B), drafts=drafts)
    if u < decode_frac + cache_frac:
        t, m, forced = mask_canvas(batch, tok.eos_token_id, gen, 0.0, eq_frac)
        b = int(torch.randint(n_blocks, (1,), generator=gen))
        return StepPlan("cache", t=t, m=m, forced=forced, block=b, drafts=drafts)
    t, m, forced = mask_canvas(batch, tok.eos_token_id, gen, prefix_frac, eq_frac)
    return StepPlan("random", t=t, m=m, forced=forced, drafts=drafts)


def slice_rows(batch, plan: StepPlan, rows: slice):
    """The sub-batch and sub-plan of ``rows`` (same prompt width, same block)."""
    sub = {"ids": batch["ids"][rows], "am": batch["am"][rows], "P": batch["P"],
           "spans": batch["spans"][rows], "result_first": batch["result_first"][rows]}
    cut = StepPlan(plan.kind, block=plan.block)
    for name in ("t", "m", "forced", "drafts"):
        value = getattr(plan, name)
        setattr(cut, name, None if value is None else value[rows])
    cut.u = None if plan.u is None else plan.u[:, rows]
    return sub, cut


def residual(logits: torch.Tensor, table: torch.Tensor, t: float, scale: float):
    """(a (B, W), D (B, W, C)): ``p = softmax(logits / t)``, ``a = scale * H(p) / log V``, ``D = p @ E``
    (the gradient reaches the target's table ``E`` through D).

    ``(None, None)`` with ``scale`` 0: the stream is off, so no residual exists, and a draft at a
    still-masked position stays (an all-zero residual would replace it with plain [MASK]: the bridge
    arm's drafts then reached the model only in block 0's first decoder state)."""
    if scale == 0:
        return None, None
    p = torch.softmax(logits.float() / t, dim=-1)  # (B, W, V)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B, W)
    a = (entropy / math.log(p.shape[-1])).clamp(0.0, 1.0) * scale
    return a, p.to(table.dtype) @ table


def soft_embeds(table: torch.Tensor, x: torch.Tensor, mask_id: int, drafts: Optional[torch.Tensor], alpha: float,
                a: Optional[torch.Tensor] = None, d: Optional[torch.Tensor] = None,
                has: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Input embeddings (B, W, C) of the window ``x`` (B, W): plain embeddings; at still-masked
    positions with a draft ``(1 - alpha) E[mask] + alpha E[draft]``; where a residual exists
    (``has``) ``(1 - a) E[mask] + a D`` instead (the stream replaces the draft, as at inference)."""
    plain = table[x]  # (B, W, C)
    out = plain
    masked = x == mask_id
    if drafts is not None and alpha > 0:
        use = masked & (drafts >= 0)
        mixed = (1 - alpha) * plain + alpha * table[drafts.clamp(min=0)]
        out = torch.where(use.unsqueeze(-1), mixed, out)
    if a is not None:
        use = masked if has is None else masked & has
        w = a.unsqueeze(-1).to(plain.dtype)  # (B, W, 1)
        out = torch.where(use.unsqueeze(-1), (1 - w) * plain + w * d.to(plain.dtype), out)
    return out


def _masked_from(ids: torch.Tensor, col: int, mask_id: int) -> torch.Tensor:
    ctx = ids.clone()
    ctx[:, col:] = mask_id
    return ctx


@torch.no_grad()
def reference_replay(reference, ids, am, s: int, e: int, mask_id: int, pad_id: int, threshold: float = THRESHOLD):
    """The reference's dual-cache threshold decoding of the block ``[s, e)``, commits teacher-forced
    (``objectives.teacher_forced_order``), keeping each forward's block logits.

    Returns ``(order (B, W), logits (K, B, W, V) float16)``: forward k's prediction of the block
    (forward 0 is the block's full forward)."""
    gold = ids[:, s:e]
    order = torch.full(gold.shape, -1, dtype=torch.long, device=ids.device)
    out = reference(_masked_from(ids, s, mask_id), attention_mask=am, use_cache=True)
    past = [tuple(x.detach() for x in layer) for layer in out.past_key_values]
    logits = out.logits[:, s:e]
    kept: List[torch.Tensor] = []
    still = torch.ones_like(gold, dtype=torch.bool)
    step = 0
    while True:
        kept.append(logits.to(torch.float16))
        _, commit = get_transfer_index(suppress_ids(logits, still, (mask_id, pad_id)), 0.0, "low_confidence",
                                       still, torch.full_like(gold, mask_id), None, threshold)
        order[commit] = step
        still &= ~commit
        if not still.any():
            return order, torch.stack(kept)
        step += 1
        xb = torch.where(still, torch.full_like(gold, mask_id), gold)
        logits = block_forward(reference, xb, am, past, s)


def _target_cache(model, table, ids, am, s: int, mask_id: int, drafts, alpha, a=None, d=None):
    """The target's dual cache at the block's start: its full forward (no gradient) over the canvas
    masked from ``s``, with the soft inputs at ``[s, L)`` that inference would feed there."""
    ctx = _masked_from(ids, s, mask_id)
    P = ids.shape[1] - GEN_LENGTH
    with torch.no_grad():
        emb = table[ctx]
        emb[:, s:] = soft_embeds(table, ctx[:, s:], mask_id, None if drafts is None else drafts[:, s - P:],
                                 alpha, a, d)
        out = model(inputs_embeds=emb, attention_mask=am, use_cache=True)
    return [tuple(x.detach() for x in layer) for layer in out.past_key_values]


def _block_loss(model, table, mask_id: int, xb, am, past, s: int, gold, mb, drafts, alpha: float, a, d, has,
                t, forced, forced_weight: float, boost) -> torch.Tensor:
    """The masked cross-entropy of the block ``xb`` (with its soft inputs) run against ``past``."""
    emb = soft_embeds(table, xb, mask_id, drafts, alpha, a, d, has)  # (B, W, C)
    rp = torch.zeros_like(am, dtype=torch.bool)
    rp[:, s:s + xb.shape[1]] = True
    logits = model(inputs_embeds=emb, attention_mask=am, past_key_values=past, use_cache=True,
                   replace_position=rp).logits
    return masked_ce(logits, gold, t, mb, forced, forced_weight, boost)


def decode_state_loss(target, reference, batch, plan: StepPlan, cfg: SoftInputConfig, mask_id: int, pad_id: int,
                      rf_weight: float = 1.0) -> torch.Tensor:
    """The masked cross-entropy of the target in decoder states of the reference's replay, with
    the reference's residuals (module docstring) and drafts at still-masked positions."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    inner = getattr(target, "module", target)
    table = inner.get_input_embeddings().weight  # (V, C)
    s, e = P + plan.block * BLOCK_LENGTH, P + (plan.block + 1) * BLOCK_LENGTH
    S, B = plan.u.shape
    with torch.no_grad():
        prev = (reference(_masked_from(ids, s - BLOCK_LENGTH, mask_id), attention_mask=am).logits[:, s:]
                if s > P else None)  # (B, L - s, V): the previous block's full forward
        order, kept = reference_replay(reference, ids, am, s, e, mask_id, pad_id)
    a_prev = d_prev = None
    if prev is not None:
        a_prev, d_prev = residual(prev, table.detach(), cfg.t_train, cfg.residual_scale)
    past = _target_cache(inner, table, ids, am, s, mask_id, plan.drafts, cfg.draft_alpha, a_prev, d_prev)
    n_steps = order.amax(1) + 1  # (B,) forwards the block took
    k = (plan.u * n_steps).floor().long()  # (S, B): the state before forward k
    mb = order.unsqueeze(0) >= k.unsqueeze(-1)  # (S, B, W)
    rows = torch.arange(B).expand(S, B)
    z = kept[(k - 1).clamp(min=0), rows].float()  # (S, B, W, V): forward k - 1's prediction
    has = (k > 0).unsqueeze(-1).expand(S, B, e - s).clone()
    if prev is not None:  # the block's first state reads the previous block's full forward
        z = torch.where((k == 0).view(S, B, 1, 1), prev[:, :e - s].float().unsqueeze(0), z)
        has[:] = True
    a, d = residual(z.flatten(0, 1), table, cfg.t_train, cfg.residual_scale)  # (S*B, W), (S*B, W, C)
    gold = ids[:, s:e].repeat(S, 1)
    mb = mb.flatten(0, 1)
    xb = torch.where(mb, torch.full_like(gold, mask_id), gold)
    drafts = None if plan.drafts is None else plan.drafts[:, s - P:e - P].repeat(S, 1)
    past = [tuple(x.repeat(S, 1, 1, 1) for x in layer) for layer in past]
    boost = result_first_boost(batch["result_first"][:, s - P:e - P].repeat(S, 1), mb, rf_weight)
    return _block_loss(target, table, mask_id, xb, am.repeat(S, 1), past, s, gold, mb, drafts, cfg.draft_alpha,
                       a, d, has.flatten(0, 1), mb.float().mean(1), torch.zeros_like(mb), 2.0, boost)


def cache_state_loss(target, reference, batch, plan: StepPlan, cfg: SoftInputConfig, mask_id: int,
                     forced_weight: float = 2.0, rf_weight: float = 1.0) -> torch.Tensor:
    """A randomly corrupted block against the target's stale cache (``objectives.dllm_cache_loss``),
    the reference's residuals of that state at still-masked positions, drafts too."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    inner = getattr(target, "module", target)
    table = inner.get_input_embeddings().weight
    s, e = P + plan.block * BLOCK_LENGTH, P + (plan.block + 1) * BLOCK_LENGTH
    mb = plan.m[:, s - P:e - P]
    state = _masked_from(ids, s, mask_id)
    state[:, s:e] = torch.where(mb, torch.full_like(mb, mask_id, dtype=ids.dtype), ids[:, s:e])
    with torch.no_grad():
        z = reference(state, attention_mask=am).logits[:, s:]  # (B, L - s, V)
    a_all, d_all = residual(z, table.detach(), cfg.t_train, cfg.residual_scale)
    past = _target_cache(inner, table, ids, am, s, mask_id, plan.drafts, cfg.draft_alpha, a_all, d_all)
    a, d = residual(z[:, :e - s], table, cfg.t_train, cfg.residual_scale)
    drafts = None if plan.drafts is None else plan.drafts[:, s - P:e - P]
    boost = result_first_boost(batch["result_first"][:, s - P:e - P], mb, rf_weight)
    return _block_loss(target, table, mask_id, state[:, s:e], am, past, s, ids[:, s:e], mb, drafts,
                       cfg.draft_alpha, a, d, None, plan.t, plan.forced[:, s - P:e - P], forced_weight, boost)


def random_mask_loss(target, reference, batch, plan: StepPlan, cfg: SoftInputConfig, mask_id: int,
                     forced_weight: float = 2.0, rf_weight: float = 1.0) -> torch.Tensor:
    """The LLaDA SFT loss on a randomly masked canvas (``objectives.dllm_loss``) with the reference's
    residuals of that canvas at the masked positions (the paper's training), drafts too."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    inner = getattr(target, "module", target)
    table = inner.get_input_embeddings().weight
    canvas = ids[:, P:]
    xt = ids.clone()
    xt[:, P:] = torch.where(plan.m, torch.full_like(canvas, mask_id), canvas)
    with torch.no_grad():
        z = reference(xt, attention_mask=am).logits[:, P:]  # (B, G, V)
    a, d = residual(z, table, cfg.t_train, cfg.residual_scale)
    emb = table[xt]
    emb = torch.cat([emb[:, :P], soft_embeds(table, xt[:, P:], mask_id, plan.drafts, cfg.draft_alpha, a, d)], 1)
    logits = target(inputs_embeds=emb, attention_mask=am).logits[:, P:]
    return masked_ce(logits, canvas, plan.t, plan.m, plan.forced, forced_weight,
                     result_first_boost(batch["result_first"], plan.m, rf_weight))

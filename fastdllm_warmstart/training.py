"""Training utilities shared by the scripts that train LLaDA-protocol models on ``tinygsm``
(``scripts/train_tiny.py``: the embedded tiny dLLM; ``scripts/train_rcd.py``: its RCD stage).

* :class:`ProblemStream`: an endless seeded stream of generated problems, never a held-out one.
* :func:`dllm_encode_batch`: left-padded prompt + EOS-padded answer canvas, with equation spans.
* :func:`mask_canvas` / :func:`masked_ce` / :func:`dllm_loss`: the LLaDA SFT objective, with the
  two masking curricula the tiny models need on a 2-core CPU (prefix cuts and equation focus).
* :func:`threshold_decode` / :func:`eval_dllm`: a small self-contained Fast-dLLM-style decoder for
  learning curves (no cache; the package's engine is what users run).
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .tasks import tinygsm

GEN_LENGTH = 96
BLOCK_LENGTH = 32
THRESHOLD = 0.9


class ProblemStream:
    """Endless seeded stream of training problems, skipping excluded questions.

    ``group_frac``: when given, the fraction of problems with a group sub-result (``3 bags with 4
    muffins in each bag``, whose product may come before the chain or right before its use): each
    problem first draws whether it has one (probability ``group_frac``), then problems are drawn
    until one matches. A training curriculum only (the task's own mix is what the generator
    draws); None keeps the generator's mix, exactly as before."""

    def __init__(self, seed: int, exclude: set, group_frac: Optional[float] = None):
        if group_frac is not None and not 0.0 <= group_frac <= 1.0:
            raise ValueError(f"group_frac={group_frac}: use a fraction in [0, 1] (or None for the task's own mix)")
        self.rng = random.Random(seed)
        self.exclude = exclude
        self.group_frac = group_frac

    def _draw(self) -> dict:
        if self.group_frac is None:
            return tinygsm.generate_problem(self.rng)
        want = self.rng.random() < self.group_frac
        while True:
            p = tinygsm.generate_problem(self.rng)
            if tinygsm.has_group(p) == want:
                return p

    def next_batch(self, n: int, pool: int = 8) -> List[dict]:
        """Batches come from a pool of ``pool`` batches sorted by question length (less padding)."""
        if not getattr(self, "queue", None):
            out = []
            while len(out) < n * pool:
                p = self._draw()
                if p["question"] not in self.exclude:
                    out.append(p)
            out.sort(key=lambda p: len(p["question"]))
            batches = [out[i * n:(i + 1) * n] for i in range(pool)]
            self.rng.shuffle(batches)
            self.queue = batches
        return self.queue.pop()


# ---------------------------------------------------------------------------------------------
# dLLM
# ---------------------------------------------------------------------------------------------

_OP_TOKENS = {"+", "-", "*", "/", "plus", "minus", "times"}


def _is_number(t: str) -> bool:
    return t.isdigit()


def equation_spans(tokens: Sequence[str]):
    """``(first, last, result)`` canvas positions of every equation in an answer's tokens, whatever
    its wording: ``a op b = c``, ``a <word> b is c`` (``divided by`` is two tokens) or
    ``c = a op b``. ``first..last`` covers the operands, operator and ``=``/``is``; ``result`` is c."""
    spans = []
    n = len(tokens)
    for q, t in enumerate(tokens):
        if t not in ("=", "is"):
            continue
        if q + 1 < n and _is_number(tokens[q + 1]) and q >= 3 and _is_number(tokens[q - 1]):
            if tokens[q - 2] in _OP_TOKENS and _is_number(tokens[q - 3]):
                spans.append((q - 3, q, q + 1))
                continue
            if q >= 4 and tokens[q - 2] == "by" and tokens[q - 3] == "divided" and _is_number(tokens[q - 4]):
                spans.append((q - 4, q, q + 1))
                continue
        if t == "=" and q >= 1 and _is_number(tokens[q - 1]) and q + 3 < n and _is_number(tokens[q + 1]) \
                and tokens[q + 2] in _OP_TOKENS and _is_number(tokens[q + 3]):
            spans.append((q, q + 3, q - 1))
    return spans


def dllm_encode_batch(tok, problems: Sequence[dict], device) -> Dict[str, torch.Tensor]:
    """Left-padded prompt ids + GEN_LENGTH-token EOS-padded answer canvas (+ equation spans)."""
    prompts = [tok.encode(tinygsm.format_prompt(p["question"]), add_special_tokens=False) for p in problems]
    answers = [tok.encode(" " + p["answer"], add_special_tokens=False) for p in problems]
    P = max(len(x) for x in prompts)
    B = len(problems)
    ids = torch.full((B, P + GEN_LENGTH), tok.pad_token_id, dtype=torch.long)
    am = torch.zeros((B, P + GEN_LENGTH), dtype=torch.long)
    for i, (pr, an) in enumerate(zip(prompts, answers)):
        if len(an) >= GEN_LENGTH:
            raise ValueError(f"answer too long ({len(an)} tokens)")
        ids[i, P - len(pr):P] = torch.tensor(pr)
        canvas = an + [tok.eos_token_id] * (GEN_LENGTH - len(an))
        ids[i, P:] = torch.tensor(canvas)
        am[i, P - len(pr):] = 1
    spans = [equation_spans(tok.convert_ids_to_tokens(an)) for an in answers]
    result_first = torch.zeros((B, GEN_LENGTH), dtype=torch.bool)
    for i, sp in enumerate(spans):
        for first, _, res in sp:
            if res < first:
                result_first[i, res] = True
    return {"ids": ids.to(device), "am": am.to(device), "P": P, "spans": spans,
            "result_first": result_first.to(device)}


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


def save_checkpoint(path, model, opt, stream: "ProblemStream", gen: torch.Generator, state: dict,
                    **extra) -> None:
    """Everything a run needs to continue on another machine (weights, optimiser, data and mask
    RNG states, the run's own ``state``), written atomically."""
    import os
    from pathlib import Path

    path = Path(path)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "data_rng": stream.rng.getstate(),
                "data_queue": getattr(stream, "queue", None), "gen_rng": gen.get_state(), "state": state,
                **extra}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_checkpoint(path, model, opt, stream: "ProblemStream", gen: torch.Generator) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint (``["state"]``, extras)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    stream.rng.setstate(ck["data_rng"])
    stream.queue = ck.get("data_queue")
    gen.set_state(ck["gen_rng"])
    return ck


def grow_state_dict(small: Dict[str, torch.Tensor], model) -> Dict[str, int]:
    """Load a smaller :class:`TinyLLaDAModelLM` checkpoint into a deeper and/or wider ``model`` of the
    same ``d_model`` so that ``model`` computes exactly the same function (function-preserving growth).

    The small model's layer ``i`` goes to layer ``i * L_new // L_old``; every other layer is a fresh
    block whose output projections (``attn_out``, ``down``) are zero, so its residual branch adds
    nothing until training moves it. A wider MLP keeps the old hidden units first in both SwiGLU
    halves and gives the new units zero output columns. Returns counts for the training log."""
    new = model.state_dict()
    old_layers = 1 + max(int(k.split(".")[1]) for k in small if k.startswith("blocks."))
    new_layers = len(model.blocks)
    if new_layers < old_layers:
        raise ValueError(f"cannot grow {old_layers} layers into {new_layers}: use --layers >= {old_layers}")
    placed = {i * new_layers // old_layers: i for i in range(old_layers)}
    with torch.no_grad():
        for name, t in new.items():
            if not name.startswith("blocks."):
                if small[name].shape != t.shape:
                    raise ValueError(f"{name}: {tuple(small[name].shape)} vs {tuple(t.shape)}; growth keeps "
                                     f"d_model and the vocabulary")
                t.copy_(small[name])
                continue
            _, idx, rest = name.split(".", 2)
            src_layer = placed.get(int(idx))
            if src_layer is None:  # a fresh block: zero residual branches, the rest as initialised
                if rest in ("attn_out.weight", "down.weight"):
                    t.zero_()
                continue
            src = small[f"blocks.{src_layer}.{rest}"]
            if rest == "gate_up.weight":
                h_old, h_new = src.shape[0] // 2, t.shape[0] // 2
                t[:h_old].copy_(src[:h_old])
                t[h_new:h_new + h_old].copy_(src[h_old:])
            elif rest == "down.weight":
                t.zero_()
                t[:, :src.shape[1]].copy_(src)
            else:
                t.copy_(src)
    model.load_state_dict(new)
    return {"layers_from": old_layers, "layers_to": new_layers,
            "mlp_from": small["blocks.0.down.weight"].shape[1], "mlp_to": new["blocks.0.down.weight"].shape[1]}


def cosine_lr(step: int, lr: float, warmup: int, steps: int, min_frac: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``min_frac * lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def versions() -> Dict[str, str]:
    """The library versions a training log records."""
    import platform

    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def optimizer_step(model, opt, loss: torch.Tensor, clip: float = 1.0) -> None:
    """Backward, gradient-norm clip, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


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
    from .engine.transfer import get_transfer_index, suppress_ids

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


def prompt_canvas(tok, questions: Sequence[str], gen_length: int = GEN_LENGTH, device=None):
    """``(x, attention_mask, P)``: the questions' prompts left-padded with ``[PAD]`` (mask 0) to the
    longest, ``P`` tokens, followed by ``gen_length`` ``[MASK]`` tokens."""
    prompts = [tok.encode(tinygsm.format_prompt(q), add_special_tokens=False) for q in questions]
    P, B = max(len(x) for x in prompts), len(prompts)
    x = torch.full((B, P + gen_length), tok.mask_token_id, dtype=torch.long, device=device)
    am = torch.ones((B, P + gen_length), dtype=torch.long, device=device)
    for i, pr in enumerate(prompts):
        x[i, :P - len(pr)] = tok.pad_token_id
        am[i, :P - len(pr)] = 0
        x[i, P - len(pr):P] = torch.tensor(pr, device=device)
    return x, am, P


@torch.no_grad()
def threshold_decode(model, tok, questions: Sequence[str], gen_length: int = GEN_LENGTH,
                     block_length: int = BLOCK_LENGTH, threshold: float = THRESHOLD,
                     batch_size: int = 100):
    """Fast-dLLM-style parallel decoding. Returns (texts, nfe per problem)."""
    model.eval()
    device = next(model.parameters()).device
    mask_id, pad_id, eos_id = tok.mask_token_id, tok.pad_token_id, tok.eos_token_id
    texts: List[str] = []
    nfes: List[int] = []
    for start in range(0, len(questions), batch_size):
        x, am, P = prompt_canvas(tok, questions[start:start + batch_size], gen_length, device)
        B = x.shape[0]
        nfe = torch.zeros(B, dtype=torch.long)
        for b in range(gen_length // block_length):
            s, e = P + b * block_length, P + (b + 1) * block_length
            while True:
                still = (x[:, s:e] == mask_id)
                active = still.any(1).nonzero(as_tuple=True)[0]
                if active.numel() == 0:
                    break
                logits = model(x[active], attention_mask=am[active]).logits[:, s:e].float()
                logits[..., mask_id] = -float("inf")
                logits[..., pad_id] = -float("inf")
                conf, pred = torch.softmax(logits, dim=-1).max(-1)
                blk_mask = still[active]
                conf = torch.where(blk_mask, conf, torch.full_like(conf, -1.0))
                commit = conf >= threshold
                commit[torch.arange(active.numel()), conf.argmax(-1)] = True
                commit &= blk_mask
                sub = x[active, s:e]
                sub[commit] = pred[commit]
                x[active, s:e] = sub
                nfe[active.cpu()] += 1
        for i in range(B):
            gen = x[i, P:].tolist()
            if eos_id in gen:
                gen = gen[:gen.index(eos_id)]
            texts.append(tok.decode(gen, skip_special_tokens=True))
        nfes += nfe.tolist()
    return texts, nfes


def score(problems: Sequence[dict], texts: Sequence[str]) -> float:
    ok = sum(1 for p, t in zip(problems, texts) if tinygsm.extract_final(t) == int(p["final"]))
    return ok / max(1, len(problems))


def engine_decode(model, tok, questions: Sequence[str], cache: str = "dual", batch_size: int = 100,
                  make_callbacks: Optional[Callable[[], list]] = None):
    """Threshold decoding through the package's engine (Fast-dLLM's cache strategies);
    ``make_callbacks`` gives each batch its own fresh callbacks (e.g. an RCD residual stream)."""
    from .engine import generate

    model.eval()
    texts: List[str] = []
    nfes: List[int] = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            prompts = [tok.encode(tinygsm.format_prompt(q), add_special_tokens=False)
                       for q in questions[start:start + batch_size]]
            out = generate(model, prompts, steps=GEN_LENGTH, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                           threshold=THRESHOLD, cache=cache, tokenizer=tok, use_upstream=False,
                           callbacks=make_callbacks() if make_callbacks else None)
            nfes.extend(out.nfe.tolist())
            for row in out.generated.tolist():
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id)]
                texts.append(tok.decode(row, skip_special_tokens=True))
    return texts, nfes


def eval_dllm(model, tok, problems, batch_size=100, cache: str = "none") -> Dict[str, float]:
    """Exact match and mean NFE of threshold decoding; ``cache``: none (the training loop's own
    decoder) or prefix / dual (the engine, as the bench decodes)."""
    t0 = time.time()
    questions = [p["question"] for p in problems]
    if cache == "none":
        texts, nfes = threshold_decode(model, tok, questions, batch_size=batch_size)
    else:
        texts, nfes = engine_decode(model, tok, questions, cache, batch_size)
    model.train()
    return {"acc": score(problems, texts), "nfe": sum(nfes) / len(nfes), "eval_s": time.time() - t0,
            "example": texts[0]}

"""The aux model's side of APD: score the dLLM's proposed run (step 3 of :mod:`.decoding`).

* :class:`SharedVocabScorer`: the aux shares the dLLM's tokenizer (``embedded:tiny-aux-dllmtok``),
  so its logits live on the dLLM's vocabulary and APD's mixture applies as published: it returns
  the aux's log-probabilities at every run position.
* :class:`BridgeScorer`: the aux has its own tokenizer (the shipped WordPiece ``tiny-aux``). The
  run is decoded to text, re-encoded with the aux tokenizer and scored on the aux's own tokens;
  a dLLM token agrees when the aux gives its text probability ``>= tau`` (the product over the aux
  tokens that end inside it) or writes every one of them greedily. No mixture: two vocabularies
  share no index to add logits on (README, "APD across the tokenizer bridge").

Both run one batched aux forward over prompt + decided answer + run, left-padded, positions
counted from each row's first real token, without a KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch

from ..engine.state import DecodeState


@dataclass
class RunScores:
    """What a scorer hands back for R rows and the W columns of the block."""

    forwards: torch.Tensor               # (R,) bool: the aux ran a forward for this row
    free: torch.Tensor                   # (R, W) bool: after the answer's EOS: no text to score
    logp: Optional[torch.Tensor] = None  # (R, W, V) aux log-probs at the run (one vocabulary)
    agree: Optional[torch.Tensor] = None  # (R, W) bool: the aux supports the token (bridge)


def _after_eos(canvas: torch.Tensor, run: torch.Tensor, state: DecodeState, block_start: int):
    """(R,) the decided answer already ended; (R, W) run positions after an EOS of the run."""
    R, W = run.shape
    if state.eos_id is None:
        return torch.zeros(R, dtype=torch.bool, device=run.device), torch.zeros_like(run)
    first = run.long().argmax(dim=1)  # (R,) the run's first column
    col = torch.arange(canvas.shape[1], device=run.device).view(1, -1)
    answer = (col >= state.prompt_width) & (col < block_start + first.view(-1, 1))
    ended = ((canvas == state.eos_id) & answer).any(dim=1)  # (R,)
    blk = canvas[:, block_start:block_start + W]
    eos_run = (blk == state.eos_id) & run
    behind = (eos_run.long().cumsum(dim=1) - eos_run.long()) > 0  # an EOS earlier in the run
    return ended, (behind & run) | (ended.view(-1, 1) & run)


def _left_padded(seqs: Sequence[Sequence[int]], pad_id: int, device):
    """(N, T) ids, attention mask and position ids of left-padded sequences."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    am = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
        am[i, T - len(s):] = 1
    pos = (am.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), am.to(device), pos.to(device)


def _aux_device(model) -> torch.device:
    return next(model.parameters()).device


class SharedVocabScorer:
    """Aux logits on the dLLM's own vocabulary (the aux shares its tokenizer)."""

    shared_vocab = True

    def __init__(self, model: Any, vocab_size: int, pad_id: int = 0):
        out = getattr(getattr(model, "config", None), "vocab_size", vocab_size)
        if out < vocab_size:
            raise ValueError(f"the aux model predicts {out} tokens, the dLLM {vocab_size}: the "
                             "mixture needs the dLLM's vocabulary (use the tokenizer bridge).")
        self.model, self.vocab_size, self.pad_id = model, vocab_size, pad_id

    @torch.no_grad()
    def score(self, state: DecodeState, rows: torch.Tensor, canvas: torch.Tensor, run: torch.Tensor,
              block_start: int) -> RunScores:
        R, W = run.shape
        ended, free = _after_eos(canvas, run, state, block_start)
        logp = torch.zeros((R, W, self.vocab_size), dtype=torch.float64, device=canvas.device)
        live = (~ended).nonzero().squeeze(1)
        if live.numel():
            r = run[live]
            last = W - 1 - r.flip(1).long().argmax(dim=1)  # (R',) the run's last column
            start = state.prompt_width - state.prompt_lengths[rows[live]].long()  # first real token
            end = block_start + last  # exclusive: the input stops before the run's last token
            T = int((end - start).max())
            cols = end.view(-1, 1) - T + torch.arange(T, device=canvas.device).view(1, -1)  # (R', T)
            valid = cols >= start.view(-1, 1)
            ids = canvas[live].gather(1, cols.clamp(min=0)).masked_fill(~valid, self.pad_id)
            pos = (cols - start.view(-1, 1)).clamp(min=0)
            dev = _aux_device(self.model)
            out = self.model(input_ids=ids.to(dev), attention_mask=valid.long().to(dev),
                             position_ids=pos.to(dev)).logits  # (R', T, V_aux)
            lp = torch.log_softmax(out[..., :self.vocab_size].double(), dim=-1).to(canvas.device)
            # block column w is predicted at input index (block_start + w - 1) - (end - T)
            at = (block_start + torch.arange(W, device=canvas.device).view(1, -1) - 1
                  - (end.view(-1, 1) - T)).clamp(0, T - 1)  # (R', W)
            logp[live] = lp.gather(1, at.unsqueeze(-1).expand(-1, -1, self.vocab_size))
        return RunScores(forwards=~ended, free=free, logp=logp)


class BridgeScorer:
    """The run scored on the aux's own tokens (module docstring); ``prompts`` are the texts of the
    problems the rows decode (``state.problem`` indexes them), rendered as the aux drafts them."""

    shared_vocab = False

    def __init__(self, model: Any, aux_tokenizer: Any, dllm_tokenizer: Any, prompts: Sequence[str],
                 tau: float = 0.3, render=None):
        if aux_tokenizer.eos_token_id is None:
            raise ValueError("APD across the tokenizer bridge needs an aux tokenizer with an EOS token.")
        self.model, self.aux, self.dllm = model, aux_tokenizer, dllm_tokenizer
        self.prompts, self.log_tau = list(prompts), math.log(tau)
        self.render = render or (lambda text: text)
        pad = aux_tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else aux_tokenizer.eos_token_id

    def _row(self, state: DecodeState, problem: int, ids: List[int], run_cols: List[int], block_start: int):
        """Aux ids of prompt + answer (+ EOS), the index of the first answer token, and for every
        answer aux token the run column (block-relative) it belongs to (-1: decided context)."""
        answer = ids[state.prompt_width:block_start + run_cols[0]]
        prompt_ids = list(self.aux(self.render(self.prompts[problem]), add_special_tokens=False)["input_ids"])
        bounds = [len(self.dllm.decode(answer, skip_special_tokens=True))]
        tail_eos = None
        for j, c in enumerate(run_cols):
            tok = ids[block_start + c]
            if tok == state.eos_id:
                tail_eos = c
                break
            bounds.append(len(self.dllm.decode(answer + [ids[block_start + k] for k in run_cols[:j + 1]],
                                               skip_special_tokens=True)))
        text = self.dllm.decode(answer + [ids[block_start + k] for k in run_cols[:len(bounds) - 1]],
                                skip_special_tokens=True)
        enc = self.aux(text, add_special_tokens=False, return_offsets_mapping=True)
        owner = []
        for _, end in enc["offset_mapping"]:
            j = next((j for j in range(1, len(bounds)) if bounds[j - 1] < end <= bounds[j]), 0)
            owner.append(run_cols[j - 1] if j else -1)
        seq = prompt_ids + list(enc["input_ids"])
        if tail_eos is not None:  # the dLLM ends the answer: the aux's EOS after the text so far
            seq.append(self.aux.eos_token_id)
            owner.append(tail_eos)
        return seq, len(prompt_ids), owner

    @torch.no_grad()
    def score(self, state: DecodeState, rows: torch.Tensor, canvas: torch.Tensor, run: torch.Tensor,
              block_start: int) -> RunScores:
        R, W = run.shape
        ended, free = _after_eos(canvas, run, state, block_start)
        agree = torch.ones_like(run)
        live = [i for i in range(R) if not bool(ended[i])]
        if live:
            problems = state.problem[rows].tolist() if state.problem is not None else rows.tolist()
            built = [self._row(state, problems[i], canvas[i].tolist(), run[i].nonzero().squeeze(1).tolist(),
                               block_start) for i in live]
            ids, am, pos = _left_padded([b[0] for b in built], self.pad_id, _aux_device(self.model))
            logits = self.model(input_ids=ids, attention_mask=am, position_ids=pos).logits.double()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)  # (N, T-1, V_aux) predicts token t+1
            nxt = ids[:, 1:]
            tok_lp = lp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1).cpu()  # (N, T-1)
            greedy = (lp.argmax(dim=-1) == nxt).cpu()
            # each predicted aux token (index k predicts token k + 1) -> 1 + its run column, 0 = none
            own = torch.zeros(tok_lp.shape, dtype=torch.long)
            T = ids.shape[1]
            for n, (seq, n_prompt, owner) in enumerate(built):
                at = T - len(seq) + n_prompt - 1  # left padding + prompt, minus the shift
                own[n, at:at + len(owner)] = torch.tensor(owner, dtype=torch.long) + 1
            total = torch.zeros((len(built), W + 1), dtype=torch.float64).scatter_add_(1, own, tok_lp)
            missed = torch.zeros((len(built), W + 1), dtype=torch.float64).scatter_add_(1, own, (~greedy).double())
            supported = (total[:, 1:] >= self.log_tau) | (missed[:, 1:] == 0)  # (N, W)
            agree[torch.tensor(live, device=agree.device)] = supported.to(agree.device)
        forwards = ~ended
        return RunScores(forwards=forwards, free=free, agree=agree | free)


def shares_vocabulary(aux_tokenizer: Any, dllm_tokenizer: Any) -> bool:
    """The aux and the dLLM tokenize alike (same token -> id table): APD's mixture applies."""
    return aux_tokenizer.get_vocab() == dllm_tokenizer.get_vocab()


__all__ = ["BridgeScorer", "RunScores", "SharedVocabScorer", "shares_vocabulary"]

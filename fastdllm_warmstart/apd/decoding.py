"""APD as the commit rule of the block loop: the dLLM proposes a run, the aux AR model accepts a prefix.

APD (arXiv 2506.00413) decodes left to right: each step the dLLM samples every masked position in
parallel, the small AR model scores that sample in one forward, and the longest prefix on which
the sample of the mixture ``R * z_dLLM + (1 - R) * z_AR`` (same Gumbel noise) equals the dLLM's
own sample is kept, its first token always. In this engine's block loop that is the commit of
step 2c, owned by :class:`AdaptiveParallelDecoding` (numbers as in :meth:`~.commit`):

1. **Propose.** The dLLM's sample ``x0`` at every masked block position: its argmax at
   temperature 0, else Gumbel-max with noise ``g`` drawn once for the step.
2. **Run.** The proposed run of each row is ``x0`` at its first open block position and the
   masked positions right after it, at most ``max_parallel`` (the paper's lookahead; the block
   bounds it too). Everything before the run is decided: APD fills each block from the left.
3. **Score.** One aux forward per row with a run of two or more: the row's prompt, its decided
   answer and the run (``scorers``). No aux forward for a run of one (its first token is kept
   anyway), nor at R = 1 (the mixture is the dLLM alone), nor after the answer's EOS (the AR
   model has no text to score there: the dLLM's sample stands, as APD stops at EOS).
4. **Agree.** Shared vocabulary: the mixture ``R * log p_dLLM + (1 - R) * log p_AR`` is sampled
   with the same ``g``; a position agrees when that sample is ``x0``. Across the tokenizer
   bridge: a position agrees when the aux gives the dLLM token's text probability
   ``>= bridge_tau`` or writes it greedily (``scorers.BridgeScorer``).
5. **Accept.** The longest agreeing prefix of the run, its first token always, is committed.

Blocks are kept: a run never crosses its block's end, the cache strategy and the block's
forwards are the engine's (dual cache: the block window against cached context, where APD uses
its own ``kv_window``). The aux model runs without a KV cache (one forward over prompt + answer
per step; its cost is counted apart: ``state.extras["aux_forwards"]``, per row).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.callbacks import DecodeCallback
from ..engine.state import DecodeState

_NEG = -1e30  # stands for -inf inside the mixture (0 * -inf would be nan at R = 0 or 1)


def gumbel_term(shape, temperature: float, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """(..., V) float64 ``-T log(-log u)``: added to log-probabilities, its argmax is a sample at
    temperature ``T`` (zeros at ``T = 0``: the argmax)."""
    if temperature == 0:
        return torch.zeros(shape, dtype=torch.float64, device=device)
    u = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    return -temperature * torch.log(-torch.log(u.clamp(min=1e-300)))


def mixture_agrees(x0: torch.Tensor, logp_dllm: torch.Tensor, logp_ar: torch.Tensor,
                   noise: torch.Tensor, mixture: float) -> torch.Tensor:
    """(R, W) bool: the sample of ``R * logp_dllm + (1 - R) * logp_ar`` with ``noise`` equals
    ``x0`` (step 4, one vocabulary). Inputs (R, W, V) float64 log-probabilities, -inf allowed."""
    d = logp_dllm.clamp(min=_NEG)
    a = logp_ar.clamp(min=_NEG)
    target = mixture * d + (1.0 - mixture) * a  # (R, W, V)
    return (target + noise).argmax(dim=-1) == x0


def accepted_prefix(agree: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
    """(R, W) bool: the longest prefix of each row's run (``run``: a contiguous stretch of
    columns) whose positions agree, the run's first position always (step 5)."""
    first = run & (run.long().cumsum(dim=1) == 1)  # (R, W)
    started = run.long().cumsum(dim=1) > 0
    ok = torch.where(started, run & (agree | first), torch.ones_like(run))
    return ok.long().cumprod(dim=1).bool() & run


class AdaptiveParallelDecoding(DecodeCallback):
    """Owns the commit: APD's proposal, aux scoring and agreeing prefix (module docstring).

    ``scorer``: :class:`~.scorers.SharedVocabScorer` (the mixture as published) or
    :class:`~.scorers.BridgeScorer` (the aux has its own tokenizer). ``mixture`` R,
    ``max_parallel`` k, ``temperature`` the dLLM's sampling temperature (the run's
    ``decode.temperature``); the bridge's ``tau`` is its scorer's."""

    owns_commit = True
    supports_refill = True  # per-row counters only (the loop zeroes them on refill)

    def __init__(self, scorer, *, mixture: float = 0.7, max_parallel: int = 16, temperature: float = 0.0):
        if not 0.0 <= mixture <= 1.0:
            raise ValueError(f"mixture={mixture} must lie in [0, 1].")
        if max_parallel < 1:
            raise ValueError(f"max_parallel={max_parallel} must be >= 1.")
        self.scorer, self.mixture, self.max_parallel = scorer, mixture, max_parallel
        self.temperature = temperature
        self.aux_calls = 0  # batched aux forward calls of the last generation

    def reset(self) -> None:
        self.aux_calls = 0

    def on_init(self, state: DecodeState) -> None:
        B = state.batch_size
        state.extras["aux_forwards"] = torch.zeros(B, dtype=torch.long, device=state.x.device)
        state.extras["apd_runs"] = torch.zeros(B, dtype=torch.long, device=state.x.device)

    def commit(self, state: DecodeState, logits, mask_index, x, rows):
        R, W, V = logits.shape
        dev = x.device
        if rows is None:  # every canvas row: those the forward counts for may decode
            rows, act = torch.arange(state.batch_size, device=dev), state.active
        else:  # the loop commits for exactly these rows (a continuous batch: several groups at once)
            act = torch.ones(rows.shape, dtype=torch.bool, device=dev)
        banned = [state.mask_id] + ([state.pad_id] if state.pad_id not in (None, state.eos_id) else [])
        logp = logits.double()
        logp[..., banned] = float("-inf")
        logp = torch.log_softmax(logp, dim=-1)  # (R, W, V)
        # 1. propose: the dLLM's sample at every masked block position
        noise = gumbel_term((R, W, V), self.temperature, state.generator, dev)
        x0 = torch.where(mask_index, (logp + noise).argmax(dim=-1), x)  # (R, W)
        # 2. run: the first open position and the masked ones right after it, at most k
        col = torch.arange(W, device=dev).view(1, -1)
        open_ = mask_index & act.view(-1, 1)
        first = torch.where(open_.any(dim=1), open_.long().argmax(dim=1), torch.full_like(rows, W))  # (R,)
        after = col >= first.view(-1, 1)
        run = (open_ | ~after).long().cumprod(dim=1).bool() & after & (col < first.view(-1, 1) + self.max_parallel)
        # 3-4. score and agree
        agree = torch.ones_like(run)
        need = run.sum(dim=1) >= 2  # (R,) a run of one is accepted without the aux
        if self.mixture == 1.0 and getattr(self.scorer, "shared_vocab", False):
            need &= False  # R = 1: the mixture is the dLLM's own logits, the aux has no say
        if bool(need.any()):
            canvas = state.x[rows].clone()  # (R, L) with the proposal written over the run
            blk = canvas[:, state.block_start:state.block_start + W]
            blk[run] = x0[run]
            sub = need.nonzero().squeeze(1)
            scored = self.scorer.score(state, rows[sub], canvas[sub], run[sub], state.block_start)
            self.aux_calls += int(scored.forwards.any())
            state.extras["aux_forwards"][rows[sub]] += scored.forwards.long()
            if scored.logp is not None:  # one vocabulary: the mixture (step 4)
                lp_ar = scored.logp.to(logp.dtype)
                lp_ar[..., banned] = float("-inf")
                agree_sub = mixture_agrees(x0[sub], logp[sub], lp_ar, noise[sub], self.mixture)
                agree[sub] = torch.where(scored.free, torch.ones_like(agree_sub), agree_sub)
            else:
                agree[sub] = scored.agree
        # 5. accept the longest agreeing prefix, its first token always
        transfer = accepted_prefix(agree, run)
        state.extras["apd_runs"][rows] += run.any(dim=1).long()
        return x0, transfer


def build_apd(config, aux_model, aux_tokenizer, dllm_tokenizer, prompts, render=None) -> AdaptiveParallelDecoding:
    """The APD callback of a run config (its ``apd`` and ``decode.temperature``): the mixture when
    the aux shares the dLLM's tokenizer, else the tokenizer bridge with ``apd.bridge_tau``.
    ``prompts``: the texts of the problems the batch decodes; ``render``: how the aux sees one."""
    from .scorers import BridgeScorer, SharedVocabScorer, shares_vocabulary

    apd = config.apd
    if shares_vocabulary(aux_tokenizer, dllm_tokenizer):
        pad = dllm_tokenizer.pad_token_id if dllm_tokenizer.pad_token_id is not None else dllm_tokenizer.eos_token_id
        scorer = SharedVocabScorer(aux_model, len(dllm_tokenizer), pad_id=pad)
    else:
        scorer = BridgeScorer(aux_model, aux_tokenizer, dllm_tokenizer, prompts, tau=apd.bridge_tau, render=render)
    return AdaptiveParallelDecoding(scorer, mixture=apd.mixture, max_parallel=apd.max_parallel,
                                    temperature=config.decode.temperature)


__all__ = ["AdaptiveParallelDecoding", "accepted_prefix", "build_apd", "gumbel_term", "mixture_agrees"]

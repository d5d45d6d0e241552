"""Warm-start initialisation, prior skepticism and residual context, as decoding callbacks.

* :class:`TokenInjection` — each generation position independently receives the proposal's token
  with probability ``rho`` (arXiv 2512.19004, Bernoulli-rho rule); the rest stay [MASK].
* :class:`EmbeddingInterpolation` — positions stay [MASK] on the canvas but the model is fed
  ``(1 - alpha) * E[mask] + alpha * E[proposal]`` there.
* :class:`ConfidenceRemask` — after each commit, priors in the current block that the model has
  not confirmed are revoked with probability ``p(t)`` when the model gives them less than ``tau``.
* Residual Context Diffusion (arXiv 2601.22954) lives in :mod:`fastdllm_warmstart.residual`;
  draft-verification rules (``--remask-rule accept|chain|prefix``) in :mod:`fastdllm_warmstart.priors`.

Random draws use a counter-based hash of (seed, prompt, position, step), so a prompt's injection
pattern and remask draws do not depend on which batch it is decoded in. Every callback leaves the
rows a forward does not count for (``state.active`` False: their block is done and they only ride
along with their batch) exactly as they are, so a row decodes the same in any batch.
"""

from __future__ import annotations

import logging
import weakref
import zlib
from typing import Any, List, Optional, Sequence

import torch

from .config import RemaskConfig, RunConfig, WarmStartConfig
from .engine.callbacks import DecodeCallback
from .engine.state import DecodeState, lay_proposals

logger = logging.getLogger(__name__)


def _s64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch multiplies with (wrapping)."""
    return value - (1 << 64) if value >= (1 << 63) else value


_M1 = _s64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants
_M2 = _s64(0x94D049BB133111EB)
_GOLDEN = _s64(0x9E3779B97F4A7C15)
_COL = _s64(0xD1B54A32D192ED03)
_STREAM = _s64(0xA0761D6478BD642F)


def _mix(z: torch.Tensor) -> torch.Tensor:
    # int64 arithmetic wraps around in torch; >> is arithmetic, which is fine for mixing.
    z = (z ^ (z >> 30)) * _M1
    z = (z ^ (z >> 27)) * _M2
    return z ^ (z >> 31)


def hashed_uniform(row_keys: torch.Tensor, columns: torch.Tensor, stream) -> torch.Tensor:
    """(B, W) float64 uniforms in [0, 1), a pure function of (row key, column, stream).

    ``stream`` is an int or a (B,) tensor (e.g. each row's own step count)."""
    if isinstance(stream, int):
        stream_term = _s64((stream * _STREAM) % (1 << 64))
    else:
        stream_term = (stream.long() * _STREAM).view(-1, 1)
    z = row_keys.view(-1, 1) * _GOLDEN + columns.view(1, -1) * _COL + stream_term
    z = _mix(_mix(z))
    return (z & ((1 << 53) - 1)).to(torch.float64) / float(1 << 53)


def prompt_keys(state: DecodeState, seed: int, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) int64 key per row (or (R,) for ``rows``) from the seed and the row's real (unpadded)
    prompt ids."""
    prompts = state.x[:, :state.prompt_width] if rows is None else state.x[rows, :state.prompt_width]
    lengths = state.prompt_lengths if rows is None else state.prompt_lengths[rows]
    keys = []
    for row, length in zip(prompts.tolist(), lengths.tolist()):
        crc = zlib.crc32(repr(row[len(row) - int(length):]).encode())
        keys.append((seed * 1_000_003 + crc) & ((1 << 62) - 1))
    return torch.tensor(keys, dtype=torch.long, device=state.x.device)


def proposals_to_tensor(proposals: Sequence[Optional[Sequence[int]]], gen_length: int,
                        device=None) -> torch.Tensor:
    """(B, G) long tensor of proposal ids, -1 for rows without a proposal."""
    out = torch.full((len(proposals), gen_length), -1, dtype=torch.long, device=device)
    for i, ids in enumerate(proposals):
        if ids is None:
            continue
        if len(ids) != gen_length:
            raise ValueError(f"Proposal {i} has {len(ids)} tokens; it must be aligned to gen_length "
                             f"({gen_length}) first (see fastdllm_warmstart.auxiliary.align_to_canvas).")
        out[i] = torch.as_tensor(list(ids), dtype=torch.long, device=device)
    return out


class _PriorCallback(DecodeCallback):
    """Shared set-up: lay the proposals onto canvas coordinates in ``state.prior_ids``, for every
    row at ``on_init`` and for refilled rows at ``on_refill`` (``proposals`` has one row per
    problem, indexed by ``state.problem``)."""

    stream = 0
    supports_refill = True
    uses_block_step = False  # the embedding schedule asks only whether block_step is 0

    def __init__(self, proposals: torch.Tensor, seed: int = 0):
        if proposals.dim() != 2:
            raise ValueError("proposals must be a (B, gen_length) tensor (-1 = no proposal).")
        self.proposals = proposals
        self.seed = seed
        self.row_keys: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.row_keys = None

    def _lay_priors(self, state: DecodeState, rows: torch.Tensor) -> None:
        lay_proposals(state, self.proposals, rows)
        B, L = state.x.shape
        if state.revisions is None:
            state.revisions = torch.zeros((B, L), dtype=torch.long, device=state.x.device)
        if state.confirmed is None:
            state.confirmed = torch.zeros((B, L), dtype=torch.bool, device=state.x.device)
        if self.row_keys is None:
            self.row_keys = torch.zeros(B, dtype=torch.long, device=state.x.device)
        self.row_keys[rows] = prompt_keys(state, self.seed, rows)
        state.extras["prior_row_keys"] = self.row_keys

    def _start(self, state: DecodeState, rows: torch.Tensor) -> None:
        self._lay_priors(state, rows)

    def on_init(self, state: DecodeState) -> None:
        self._start(state, torch.arange(state.batch_size, device=state.x.device))

    def on_refill(self, state: DecodeState) -> None:
        self._start(state, state.refilled)


class TokenInjection(_PriorCallback):
    """Bernoulli(rho) token injection of the proposal into the masked canvas."""

    def __init__(self, proposals: torch.Tensor, rho: float, seed: int = 0):
        super().__init__(proposals, seed)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho={rho} must lie in [0, 1].")
        self.rho = rho

    def _start(self, state: DecodeState, rows: torch.Tensor) -> None:
        self._lay_priors(state, rows)
        # Columns relative to the generation start, so padding width does not change the draw.
        cols = torch.arange(state.x.shape[1], device=state.x.device) - state.prompt_width
        draw = hashed_uniform(self.row_keys[rows], cols, stream=0) < self.rho  # (R, L)
        prior = state.prior_ids[rows]
        inject = draw & (prior >= 0) & (state.x[rows] == state.mask_id)  # (R, L)
        state.x[rows] = torch.where(inject, prior, state.x[rows])
        if state.injected is None:
            state.injected = torch.zeros_like(state.x, dtype=torch.bool)
        state.injected[rows] = inject
        if "injected" not in state.extras:
            state.extras["injected"] = torch.zeros(state.batch_size, dtype=torch.long, device=state.x.device)
        state.extras["injected"][rows] = inject[:, state.gen_slice].sum(1)


class EmbeddingInterpolation(_PriorCallback):
    """Feed ``(1 - alpha) * E[mask] + alpha * E[prior]`` at masked positions with a prior."""

    def __init__(self, proposals: torch.Tensor, alpha: float, schedule: str = "every_forward",
                 seed: int = 0):
        super().__init__(proposals, seed)
        if schedule not in ("every_forward", "block_first"):
            raise ValueError(f"schedule={schedule!r}: use 'every_forward' or 'block_first'.")
        self.alpha = alpha
        self.schedule = schedule

    def before_forward(self, state: DecodeState) -> None:
        if self.schedule == "block_first" and state.block_step > 0:
            return
        x_win = state.window_view(state.x)  # (B, W)
        prior_win = state.window_view(state.prior_ids)  # (B, W)
        use = (x_win == state.mask_id) & (prior_win >= 0)  # (B, W)
        if not bool(use.any()):
            return
        embeds = state.inputs_embeds if state.inputs_embeds is not None else state.embed(x_win)  # (B, W, C)
        prior_emb = state.embed(prior_win.clamp(min=0))  # (B, W, C)
        mixed = (1.0 - self.alpha) * embeds + self.alpha * prior_emb
        state.inputs_embeds = torch.where(use.unsqueeze(-1), mixed.to(embeds.dtype), embeds)


class ConfidenceRemask(DecodeCallback):
    """Prior skepticism: revoke unconfirmed priors the model finds unlikely.

    Token mode: an injected token is put back to [MASK]. Embedding mode: the position keeps its
    [MASK] and simply stops receiving the interpolated prior. Only priors are ever touched; a
    token the model committed itself is never revoked. A revoked position stops being a
    candidate (token mode: it is an ordinary [MASK] now; embed mode: it has no prior any more), so
    each position is revoked at most once and decoding always terminates. Revocations are counted
    per position in ``state.revisions``.
    """

    stream = 1
    supports_refill = True  # per-row state lives on the DecodeState, which the loop clears
    uses_block_step = False

    def __init__(self, config: RemaskConfig):
        self.config = config

    def before_forward(self, state: DecodeState) -> None:
        """Token mode: show the model [MASK] at the block's unconfirmed injected positions.

        A masked-diffusion model is trained to predict masked positions only; its output at a
        position whose token it can see is untrained and mostly echoes the input, so judging a
        visible prior would confirm it on sight. Masking it in the *input* (the canvas keeps the
        token) makes the prediction there a genuine verdict. Priors in later blocks stay visible
        as context."""
        if state.injected is None or state.prior_ids is None:
            return
        w0, w1 = state.window
        lo, hi = max(w0, state.block_start), min(w1, state.block_end)
        hide = state.injected[:, lo:hi] & ~state.confirmed[:, lo:hi]  # (B, Wb)
        if not bool(hide.any()):
            return
        if state.inputs_embeds is None:
            ids = state.window_view(state.x).clone()  # (B, W)
            ids[:, lo - w0:hi - w0][hide] = state.mask_id
            state.inputs_embeds = state.embed(ids)  # (B, W, C)
        else:
            mask_emb = state.embed(torch.tensor(state.mask_id, device=state.x.device))  # (C,)
            embeds = state.inputs_embeds.clone()
            embeds[:, lo - w0:hi - w0][hide] = mask_emb.to(embeds.dtype)
            state.inputs_embeds = embeds

    @staticmethod
    def _prior_probs(state: DecodeState, lo: int, hi: int) -> torch.Tensor:
        """(B, hi - lo) model probability of the prior token at canvas columns [lo, hi)."""
        prior = state.prior_ids[:, lo:hi].clamp(min=0)  # (B, Wb)
        w0 = state.window[0]
        logits = state.logits[:, lo - w0:hi - w0].double()  # (B, Wb, V): logits are window-relative
        picked = torch.gather(logits, -1, prior.unsqueeze(-1)).squeeze(-1)
        return torch.exp(picked - torch.logsumexp(logits, dim=-1))

    def after_commit(self, state: DecodeState) -> None:
        if state.prior_ids is None or state.logits is None:
            return
        w0, w1 = state.window
        lo, hi = max(w0, state.block_start), min(w1, state.block_end)
        cols = slice(lo, hi)
        has_prior = state.prior_ids[:, cols] >= 0  # (B, Wb)
        if state.injected is not None:
            candidates = state.injected[:, cols]  # token mode: injected, not yet revoked
        else:
            candidates = has_prior & (state.x[:, cols] == state.mask_id)  # embed mode
        # Only rows this forward counted for: a row that was only carried along by its batch
        # would not have run this step alone, so it must not be judged at it either.
        candidates = candidates & ~state.confirmed[:, cols] & state.active.view(-1, 1)
        if not bool(candidates.any()):
            return
        probs = self._prior_probs(state, lo, hi)
        state.confirmed[:, cols] |= candidates & (probs >= self.config.confirm)
        # t = the row's own step count (its NFE so far), so draws do not depend on the batch.
        row_step = state.nfe - 1  # (B,)
        p_revoke = self.config.probability(row_step.double()).view(-1, 1)  # (B, 1)
        col_ids = torch.arange(lo, hi, device=state.x.device) - state.prompt_width
        draw = hashed_uniform(state.extras["prior_row_keys"], col_ids, stream=row_step * 2 + self.stream)
        revoke = candidates & (probs < self.config.tau) & (draw < p_revoke)
        if not bool(revoke.any()):
            return
        state.revisions[:, cols] += revoke.long()
        if state.injected is not None:
            state.x[:, cols][revoke] = state.mask_id
            state.injected[:, cols] &= ~revoke
        else:
            state.prior_ids[:, cols][revoke] = -1
        full = torch.zeros_like(state.x, dtype=torch.bool)
        full[:, cols] = revoke
        state.revoked = full[:, w0:w1]


def _remask_callback(config: RunConfig, proposals: torch.Tensor) -> DecodeCallback:
    """``--remask`` with its rule: the paper-style revoke step, or a draft-verification rule."""
    # A config the runner has not resolved for its model (RemaskConfig.resolved): "auto" picks the
    # rule every model supports.
    rm = config.remask.resolved(transient_queries=False)
    if rm.rule == "revoke":
        return ConfidenceRemask(rm)
    from .priors import build_verifier

    d = config.decode
    return build_verifier(rm.rule, proposals, tau_accept=rm.tau_accept, rel=rm.rel, floor=rm.floor,
                          threshold=None if d.factor is not None else d.threshold, context=rm.context,
                          frontier_guess=rm.frontier)


def build_callbacks(config: RunConfig, proposals: Optional[torch.Tensor],
                    reference: Optional[torch.nn.Module] = None) -> List[DecodeCallback]:
    """The callbacks a run config asks for, built-ins first, in the order they must run.

    ``proposals``: (B, gen_length) ids with -1 for rows without a proposal (cold rows), or None.
    ``reference``: the model that starts the residual stream (``residual_start=reference``).
    """
    callbacks: List[DecodeCallback] = []
    warm: WarmStartConfig = config.warm
    by_wino = config.remask_by_wino
    if warm.enabled and proposals is not None and bool((proposals >= 0).any()):
        if by_wino:  # the whole draft on the canvas, as WINO's first wide-in; its narrow-out judges it
            callbacks.append(TokenInjection(proposals, rho=1.0, seed=warm.seed))
        elif warm.warm_init == "token":
            callbacks.append(TokenInjection(proposals, rho=warm.rho, seed=warm.seed))
        else:
            callbacks.append(EmbeddingInterpolation(proposals, alpha=warm.alpha,
                                                    schedule=warm.embed_schedule, seed=warm.seed))
        if config.remask.enabled and not by_wino:
            callbacks.append(_remask_callback(config, proposals))
    if config.wino_decodes:  # after the warm start: priors it lays are judged on the shadow
        from .wino.decoding import NarrowOut

        callbacks.append(NarrowOut(tau_out=config.wino.tau_out, cap=config.wino.cap))
    if config.residual.enabled:
        from .residual import ResidualContext

        rc = config.residual
        callbacks.append(ResidualContext(t_res=rc.t_res, start=rc.start, reference=reference))
    return callbacks


_warned_soft_inputs: "weakref.WeakSet[Any]" = weakref.WeakSet()


def reads_drafts(model: Any) -> bool:
    """Whether the model's config declares it was trained to read interpolated drafts:
    ``soft_inputs`` true, or a label naming the bridge (``"bridge"``, ``"rcd+bridge"``: what
    scripts/train_rcd.py writes; ``"rcd"`` alone or ``"none"`` do not)."""
    declared = getattr(getattr(model, "config", None), "soft_inputs", None)
    if isinstance(declared, str):
        return "bridge" in declared.split("+")
    return declared is True


def warn_unread_soft_inputs(model: Any, config: RunConfig) -> None:
    """Warn once per model: ``--warm-init embed`` without a verifier, on a model whose config does
    not declare that it reads soft inputs (:func:`reads_drafts`), feeds it inputs it never saw:
    the paper's collapse."""
    if config.warm.warm_init != "embed" or config.remask.enabled:
        return
    if reads_drafts(model) or model in _warned_soft_inputs:
        return
    _warned_soft_inputs.add(model)
    logger.warning("--warm-init embed without --remask, on a model not trained to read soft inputs "
                   "(its config declares no soft_inputs), reproduces the paper's collapse; add "
                   "--remask, or decode with the bridge-trained model (scripts/train_rcd.py "
                   "--draft-frac, e.g. --model embedded:tiny-dllm-rcd).")

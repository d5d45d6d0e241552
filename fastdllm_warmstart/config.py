"""Frozen, validated configuration objects.

One dataclass per concern. Every default lives here and nowhere else; the CLI, the lm-eval model
and the benchmark all build these objects through :func:`configs_from_flat`, whose keyword names
are the flat, string-friendly names used on the command line (``--warm-init``) and in lm-eval's
``--model_args`` (``warm_init=embed``).

Precedence, written down once: explicit CLI flag > ``--model_args`` / config file value > the
defaults below.

Bad values raise :class:`ConfigError` (a ``ValueError``) whose message names the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from .apd.config import ApdConfig
from .config_fields import ConfigError, _check_choice, _check_int, _check_range, setting
from .wino.config import WinoConfig

CACHE_MODES = ("none", "prefix", "dual")
REMASKING_RULES = ("low_confidence", "random")
WARM_INITS = ("none", "token", "embed")
EMBED_SCHEDULES = ("every_forward", "block_first")
REMASK_SCHEDULES = ("linear", "exp")
# How --remask treats a prior (fastdllm_warmstart.priors): "revoke" is the paper-style confidence
# remask (judge injected priors, revoke unlikely ones, never commit one early); the others commit
# draft tokens the dLLM supports, earlier than it would commit them alone; "wino" lays the whole
# draft and lets WINO's narrow-out judge it (fastdllm_warmstart.wino).
REMASK_RULES = ("auto", "revoke", "accept", "chain", "prefix", "spec", "wino")
# tau_accept when it is left unset, per rule (RemaskConfig.resolved)
RULE_TAU_ACCEPT = {"accept": 0.3, "chain": 0.3, "prefix": 0.3, "spec": 0.1}
PRIOR_CONTEXTS = ("hidden", "visible")
RESIDUAL_STARTS = ("zeros", "reference")
# Fast-dLLM's decoding loop exists in two shapes that give the same tokens but different NFE:
# "current" (today's upstream: a cached loop checks for remaining masks before each cached
# forward) and "snapshot-2025-06" (the June-2025 release: one cached forward always follows the
# full one). "auto" follows the Fast-dLLM checkout that is found, else "current".
LOOP_VARIANTS = ("auto", "current", "snapshot-2025-06")
# How a batch of prompts is decoded (fastdllm_warmstart.engine.rows): "static" moves the batch
# through each block together (upstream); "refill" lets every row go at its own pace and gives a
# finished row the next prompt; "auto" refills where the answers stay the static batch's.
BATCHING_MODES = ("auto", "static", "refill")


@dataclass(frozen=True)
class DecodeConfig:
    """Fast-dLLM decoding settings (upstream's argument names and meanings)."""

    # Length of the answer canvas. 96 fits every tinygsm answer (<= 88 tokens by construction)
    # with an EOS tail, as LLaDA's SFT data pads answers with EOS; LLaDA-8B users pass 256.
    gen_length: int = setting(96, "answer canvas length")
    # Semi-autoregressive block size: Fast-dLLM's GSM8K setting (32, with gen_length 256).
    block_length: int = setting(32, "semi-autoregressive block size")
    # Total denoising steps for the fixed schedule (threshold=None); None means gen_length,
    # i.e. one token per step, upstream's usual setting.
    steps: Optional[int] = setting(None, "steps of the fixed schedule", unset="gen_length")
    temperature: float = setting(0.0, "sampling temperature of the commit rule (0: greedy)")
    remasking: str = setting("low_confidence", "which masked positions to commit first",
                             choices=REMASKING_RULES)
    # Fast-dLLM's parallel-decoding default: commit every masked position of the block whose
    # confidence >= 0.9 (always at least the most confident one). None = fixed schedule.
    threshold: Optional[float] = setting(
        0.9, "confidence threshold of parallel decoding; none: the fixed schedule of --steps")
    # Fast-dLLM's second parallel-decoding rule (get_transfer_index_dynamic): commit the n most
    # confident masked positions of the block while the n-th clears 1 - factor / (n + 1), at
    # least one. None = unused. When set it is the commit rule and threshold is not used: the
    # precedence of upstream's generate functions and eval_llada.py.
    factor: Optional[float] = setting(
        None, "Fast-dLLM's factor rule, used instead of --threshold: commit the top n while the "
              "n-th confidence >= 1 - factor/(n+1)", unset="unused")
    # Fast-dLLM's fastest mode; all three give the same tokens up to cache approximation.
    cache: str = setting("dual", "KV cache strategy", choices=CACHE_MODES)
    # Which upstream loop to reproduce (LOOP_VARIANTS). "auto" reproduces the Fast-dLLM checkout
    # that is found (the results are then the ones that checkout's own functions give), and
    # today's upstream without one; record an explicit value to make NFE figures reproducible.
    loop_variant: str = setting(
        "auto", "upstream loop to reproduce: current (a block the full forward completes costs 1 "
                "forward), snapshot-2025-06 (always 2 with a cache) or auto (the found Fast-dLLM "
                "checkout's, else current)", choices=LOOP_VARIANTS)
    # Stop a row once it has produced EOS and everything after it is EOS. Off for parity.
    early_stop: bool = setting(False, "stop a row once it produced EOS and only EOS follows")
    # A forward computes only the rows it counts for: a row whose block is done stops riding
    # along with the batch's slowest row (upstream computes every row). Each row's tokens and NFE
    # are unchanged (greedy decoding; sampling draws differ); the batch's cost follows the rows'
    # own NFE instead of the slowest row's. The full forward opening a block runs every row.
    skip_done_rows: bool = setting(
        True, "forwards compute only rows whose block still has masks (off: every row, as upstream)")
    # auto: continuous batching (a row moves on to its next block as soon as its block is done, and
    # a finished row takes the next prompt, so a call carries a full batch of useful rows) wherever
    # each answer's tokens and NFE stay the static batch's: a model that ignores padding (the
    # embedded one; not upstream's LLaDA), greedy commits, callbacks that support it. static:
    # upstream's batch. refill: continuous batching even where answers may change.
    batching: str = setting(
        "auto", "how a batch decodes: refill (each row at its own pace, a finished row takes the next "
                "prompt), static (the batch moves block by block, upstream) or auto (refill where the "
                "answers stay the static batch's)", choices=BATCHING_MODES)

    def __post_init__(self) -> None:
        _check_int("gen_length", self.gen_length, 1)
        _check_int("block_length", self.block_length, 1)
        if self.gen_length % self.block_length:
            raise ConfigError(f"gen_length ({self.gen_length}) must be a multiple of block_length "
                              f"({self.block_length}); e.g. --gen-length "
                              f"{self.block_length * max(1, self.gen_length // self.block_length)}.")
        if self.steps is not None:
            _check_int("steps", self.steps, 1)
            if self.steps % self.num_blocks:
                raise ConfigError(f"steps ({self.steps}) must be a multiple of the number of blocks "
                                  f"({self.num_blocks} = gen_length / block_length).")
        _check_range("temperature", self.temperature, 0.0, float("inf"), hi_open=True)
        _check_choice("remasking", self.remasking, REMASKING_RULES)
        if self.threshold is not None:
            _check_range("threshold", self.threshold, 0.0, 1.0, lo_open=True)
        if self.factor is not None:
            _check_range("factor", self.factor, 0.0, float("inf"), lo_open=True, hi_open=True)
        _check_choice("cache", self.cache, CACHE_MODES)
        _check_choice("loop_variant", self.loop_variant, LOOP_VARIANTS)
        _check_choice("batching", self.batching, BATCHING_MODES)
        for name in ("early_stop", "skip_done_rows"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def resolved_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def commit_rule(self) -> str:
        """``factor``, ``threshold`` or ``schedule``: the rule that decides each step's commits."""
        if self.factor is not None:
            return "factor"
        return "schedule" if self.threshold is None else "threshold"


@dataclass(frozen=True)
class WarmStartConfig:
    """How the auxiliary proposal initialises the canvas."""

    # none: upstream cold start. token: Bernoulli(rho) token injection. embed: interpolated
    # input embeddings at masked positions.
    warm_init: str = setting("none", "canvas initialisation: none (cold, upstream), token (inject "
                                     "draft tokens, --rho) or embed (interpolate embeddings, --alpha)",
                             choices=WARM_INITS)
    # The paper's injection rate (arXiv 2512.19004): each generation position independently gets
    # the proposal token with probability rho.
    rho: float = setting(0.25, "token injection rate: each answer position gets the draft token "
                                "with this probability")
    # The paper's interpolation weight: (1 - alpha) * E[mask] + alpha * E[proposal].
    alpha: float = setting(0.6, "embedding interpolation weight: (1 - alpha) E[mask] + alpha E[draft]")
    # every_forward: the prior is fed on every forward while the position is masked (the model
    # keeps seeing it until it decodes or rejects it). block_first: only on the first forward of
    # each block (the prior seeds the block, later steps see plain [MASK]).
    embed_schedule: str = setting("every_forward", "when the interpolated prior is fed",
                                  choices=EMBED_SCHEDULES)
    # Seed of the injection draw (and of the remask draws); results are reproducible per seed.
    seed: int = setting(0, "seed of the injection and remask draws")

    def __post_init__(self) -> None:
        _check_choice("warm_init", self.warm_init, WARM_INITS)
        _check_range("rho", self.rho, 0.0, 1.0)
        _check_range("alpha", self.alpha, 0.0, 1.0)
        _check_choice("embed_schedule", self.embed_schedule, EMBED_SCHEDULES)
        _check_int("seed", self.seed, 0)

    @property
    def enabled(self) -> bool:
        return self.warm_init != "none"


@dataclass(frozen=True)
class RemaskConfig:
    """Confidence-based remasking of unverified priors ("prior skepticism").

    After each commit, every position of the current block that still holds a prior the model has
    not confirmed is revoked with probability ``p(t)`` when the model's probability of the prior
    token is below ``tau``. ``t`` counts the decoding steps of the generation. A prior counts as
    confirmed once the model gives it probability >= ``confirm``; confirmed priors and tokens the
    model decoded itself are never revoked. In token mode the block's unconfirmed priors reach the
    model as [MASK] so that the probability is a real prediction (see ``ConfidenceRemask``).
    """

    enabled: bool = setting(False, "judge the draft's priors with --remask-rule")
    # A proposal token the model gives less than 0.5 is one it thinks is more likely wrong than
    # right: revoke it. Lower values keep more priors (more NFE saving, more wrong answers).
    tau: float = setting(0.5, "revoke rule: revoke a prior the model gives less than this")
    # Full skepticism at the start: at step 0 the model has seen the whole prior once and its
    # disagreement is the most informative signal we have.
    p_init: float = setting(1.0, "revoke rule: revocation probability at step 0")
    # linear: p(t) = p_init * max(0, 1 - t / horizon); exp: p(t) = p_init * decay ** t.
    schedule: str = setting("linear", "revoke rule: decay of the revocation probability",
                            choices=REMASK_SCHEDULES)
    # Linear horizon in steps. 32 is about the NFE of a cold tiny-model run: priors that survive
    # that long have been read in context many times and are kept.
    horizon: int = setting(32, "linear schedule: steps until the revocation probability is 0")
    # Exponential decay per step; 0.9 halves the revocation probability every ~6.6 steps.
    decay: float = setting(0.9, "exp schedule: per-step decay of the revocation probability")
    # The model's own commit threshold doubles as the confirmation level: a prior the model
    # would have decoded itself at this confidence counts as verified.
    confirm: float = setting(0.9, "revoke rule: probability at which a prior counts as confirmed")
    # No revision cap: a revoked position is an ordinary [MASK] (token mode) or loses its prior
    # (embed mode), so it is never a candidate again; each position is revoked at most once and
    # every step still commits a token, so decoding terminates.
    # Which rule judges the priors (REMASK_RULES). "auto" is the default: spec (tau_accept 0.1) where
    # the model takes transient queries (the embedded tiny dLLM), else chain (rel 0.3). Chosen on
    # seven development seeds and confirmed on six fresh ones (results/default/, README): spec 0.1
    # +2.5 points over cold at 0.35x NFE; chain rel 0.3 +0.5 at 0.54x; the first default, chain rel
    # 0.2, -1.0 at 0.39x. wino (the draft laid whole, WINO's narrow-out judging it) is faster and
    # +3.4 with the aux's drafts, but not a verifier of bad drafts: near-miss drafts (one wrong
    # result) and drafts for the wrong problem stay visible and steer the model (README), so it is
    # opt-in.
    rule: str = setting("auto", "auto (spec where the model takes transient queries, else chain) | "
                                "revoke (paper-style: judge injected priors, revoke unlikely ones) | accept | "
                                "chain | prefix | spec (commit draft tokens the dLLM supports early) | wino "
                                "(lay the whole draft, WINO's narrow-out re-masks what the dLLM does not "
                                "support: fastest with good drafts, not safe with bad ones)",
                         choices=REMASK_RULES)
    # accept / chain / spec: commit a draft token the model gives at least this probability (or ranks
    # first). Below the 0.9 commit threshold on purpose: a coherent draft is judged as a whole. Unset:
    # the rule's own level (RULE_TAU_ACCEPT): spec judges each token given the draft before it, so
    # a lower level is as safe there as 0.3 is for accept / chain.
    tau_accept: Optional[float] = setting(None, "accept/chain/spec: commit a draft token the model gives "
                                                "at least this", unset="spec 0.1, accept/chain 0.3")
    # chain: also commit a draft token whose probability is >= rel x that of the draft token before
    # it (a chain-rule estimate of its conditional given the draft so far). 0.3 kept cold's accuracy
    # on the development seeds (+0.5 points, 0.54x NFE); 0.2 cut more forwards (0.39x) and lost 1.0.
    rel: float = setting(0.3, "chain: ... or at least this x the probability of the draft token before it")
    # ... as long as its own probability is at least this (a long run cannot carry a token the
    # model gives next to nothing).
    floor: float = setting(0.01, "chain: never a draft token the model gives less than this")
    # accept / chain / prefix: hidden = unverified drafts never reach the model (robust to drafts
    # for the wrong problem); visible = injected / interpolated priors of later blocks stay
    # visible as context while the current block is judged.
    context: str = setting("hidden", "accept/chain/prefix: hidden or visible later-block priors as "
                                     "context", choices=PRIOR_CONTEXTS)
    # accept / chain / prefix: when the draft is not supported at the first open position, place
    # upstream's forced guess there instead of at the most confident position. Off: it turns
    # decoding left-to-right, which cost the tiny model accuracy with bad drafts (README).
    frontier: bool = setting(False, "accept/chain/prefix: put the forced guess at the first open "
                                    "position when the draft is not supported there")

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"remask must be true or false, got {self.enabled!r}.")
        _check_range("remask_tau", self.tau, 0.0, 1.0)
        _check_range("remask_p_init", self.p_init, 0.0, 1.0)
        _check_choice("remask_schedule", self.schedule, REMASK_SCHEDULES)
        _check_int("remask_horizon", self.horizon, 1)
        _check_range("remask_decay", self.decay, 0.0, 1.0)
        _check_range("remask_confirm", self.confirm, 0.0, 1.0)
        _check_choice("remask_rule", self.rule, REMASK_RULES)
        if self.tau_accept is not None:
            _check_range("remask_tau_accept", self.tau_accept, 0.0, 1.0, lo_open=True)
        _check_range("remask_rel", self.rel, 0.0, 1.0, lo_open=True)
        _check_range("remask_floor", self.floor, 0.0, 1.0, lo_open=True)
        _check_choice("remask_context", self.context, PRIOR_CONTEXTS)
        if not isinstance(self.frontier, bool):
            raise ConfigError(f"remask_frontier must be true or false, got {self.frontier!r}.")

    def resolved(self, transient_queries: bool) -> "RemaskConfig":
        """This config with ``rule="auto"`` and an unset ``tau_accept`` made explicit:
        ``transient_queries`` says whether the model takes the transient queries spec needs."""
        rule = self.rule if self.rule != "auto" else ("spec" if transient_queries else "chain")
        tau = self.tau_accept if self.tau_accept is not None else RULE_TAU_ACCEPT.get(rule)
        if rule == self.rule and tau == self.tau_accept:
            return self
        return dataclasses.replace(self, rule=rule, tau_accept=tau)

    def probability(self, step):
        """p(t) for an int step or a tensor of per-row steps."""
        if self.schedule == "linear":
            if isinstance(step, int):
                return self.p_init * max(0.0, 1.0 - step / self.horizon)
            return self.p_init * (1.0 - step / self.horizon).clamp(min=0.0)
        return self.p_init * self.decay ** step


@dataclass(frozen=True)
class AuxConfig:
    """The auxiliary autoregressive proposer."""

    # Path (or importable name) of a Hugging Face causal LM; None = the embedded tiny aux model.
    aux_model: Optional[str] = setting(None, "aux causal LM (HF folder or hub name)",
                                       unset="the embedded tiny aux model")
    # Greedy proposal length in aux tokens; None = 2 * gen_length (aux tokenizers split finer).
    aux_max_new_tokens: Optional[int] = setting(None, "aux greedy draft length in aux tokens",
                                                unset="2 x gen_length")
    # Drafts are short greedy generations: a wide batch is what makes them cheap (the embedded aux:
    # 15 ms per problem at 8, 4 ms at 64 on one CPU thread).
    aux_batch_size: int = setting(64, "aux model batch size")
    # None = use the aux tokenizer's chat template when it has one (Instruct models).
    aux_chat_template: Optional[bool] = setting(None, "use the aux tokenizer's chat template",
                                                unset="iff it has one")
    # JSONL proposal cache keyed by prompt, aux model and its settings; None = no cache.
    proposal_cache: Optional[str] = setting(None, "JSONL cache of aux proposals, reused across runs")
    # A JSONL file of ready proposals ({"prompt": ..., "proposal": ...}) used instead of the aux.
    proposals: Optional[str] = setting(None, "JSONL of ready proposals ({prompt, proposal}) used "
                                                   "instead of the aux model")

    def __post_init__(self) -> None:
        if self.aux_max_new_tokens is not None:
            _check_int("aux_max_new_tokens", self.aux_max_new_tokens, 1)
        _check_int("aux_batch_size", self.aux_batch_size, 1)


@dataclass(frozen=True)
class ResidualConfig:
    """Residual Context Diffusion (arXiv 2601.22954) at inference (``fastdllm_warmstart.residual``):
    masked positions are fed ``(1 - a) E[mask] + a sum_j p_j E_j`` from the model's previous
    prediction, ``a = H(p) / log V``. Meant for a model trained to read it (``scripts/train_rcd.py``)."""

    enabled: bool = setting(False, "feed the residual stream (for an RCD-trained model, e.g. the "
                                   "embedded tiny-dllm-rcd)")
    # Temperature of the residual distribution at inference: RCD trains at 1 and sharpens at
    # inference to align the entropies (the paper uses 0.92-0.98).
    t_res: float = setting(0.95, "residual temperature at inference")
    # Where the stream starts before a position was predicted: zeros (plain [MASK]) or one
    # forward of the reference model (residual_reference). With --warm-init embed the aux draft
    # is the start instead.
    start: str = setting("zeros", "zeros, or reference: one forward of --residual-reference starts "
                                  "the stream", choices=RESIDUAL_STARTS)
    # The reference model for start=reference (a checkpoint folder; "embedded" = the tiny dLLM).
    reference: Optional[str] = setting(None, "reference model for --residual-start reference "
                                                 "('embedded': the tiny dLLM)")

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"residual must be true or false, got {self.enabled!r}.")
        _check_range("residual_t_res", self.t_res, 0.0, 10.0, lo_open=True)
        _check_choice("residual_start", self.start, RESIDUAL_STARTS)
        if self.start == "reference" and not self.reference:
            raise ConfigError("residual_start=reference needs residual_reference=PATH (the model the "
                              "RCD model was trained against; 'embedded' for the tiny dLLM).")




@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a decoding run, in one frozen object (saved beside results)."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    warm: WarmStartConfig = field(default_factory=WarmStartConfig)
    remask: RemaskConfig = field(default_factory=RemaskConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    wino: WinoConfig = field(default_factory=WinoConfig)
    apd: ApdConfig = field(default_factory=ApdConfig)

    def __post_init__(self) -> None:
        if self.apd.enabled and (self.warm.enabled or self.remask.enabled or self.wino.enabled):
            raise ConfigError("apd is a decoding mode of its own (the aux verifies the dLLM's tokens, it "
                              "drafts nothing): drop warm_init / remask / wino, or apd.")
        self.wino.check_run(self)

    @property
    def remask_by_wino(self) -> bool:
        """``remask`` with rule ``wino``: the whole draft laid, WINO's narrow-out its verifier."""
        return self.remask.enabled and self.remask.rule == "wino"

    @property
    def wino_decodes(self) -> bool:
        """Whether WINO decodes this run: ``wino``, or a warm start with ``remask`` rule ``wino``
        (the whole draft laid, its narrow-out the verifier). A resolved config's answer (an ``auto`` rule
        is not wino until :meth:`RemaskConfig.resolved` says so)."""
        return self.wino.enabled or (self.warm.enabled and self.remask_by_wino)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_flat(self) -> Dict[str, Any]:
        """The flat keys of this config (the inverse of :func:`configs_from_flat`)."""
        d = self.to_dict()
        return {flat: d[section][name] for flat, (section, name) in _FLAT.items()}


# Flat name -> (section, field). The flat names are the CLI flags (with '-' for '_') and the
# lm-eval --model_args keys.
_FLAT: Dict[str, Tuple[str, str]] = {}
for _section, _cls in (("decode", DecodeConfig), ("warm", WarmStartConfig), ("aux", AuxConfig)):
    for _f in fields(_cls):
        _FLAT[_f.name] = (_section, _f.name)
_FLAT["remask"] = ("remask", "enabled")
for _f in fields(RemaskConfig):
    if _f.name != "enabled":
        _FLAT[f"remask_{_f.name}"] = ("remask", _f.name)
for _section, _cls in (("residual", ResidualConfig), ("wino", WinoConfig), ("apd", ApdConfig)):
    _FLAT[_section] = (_section, "enabled")
    for _f in fields(_cls):
        if _f.name != "enabled":
            _FLAT[f"{_section}_{_f.name}"] = (_section, _f.name)
FLAT_KEYS = tuple(sorted(_FLAT))

_SECTIONS = {"decode": DecodeConfig, "warm": WarmStartConfig, "remask": RemaskConfig,
             "aux": AuxConfig, "residual": ResidualConfig, "wino": WinoConfig, "apd": ApdConfig}


def _coerce(name: str, raw: Any, target_type: Any) -> Any:
    """Turn CLI / --model_args strings into the field's type."""
    if not isinstance(raw, str):
        if isinstance(raw, int) and not isinstance(raw, bool) and "float" in str(target_type):
            return float(raw)
        return raw
    text = raw.strip()
    type_text = str(target_type)
    if text.lower() in ("none", "null", "") and "Optional" in type_text:
        return None
    if "bool" in type_text:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r}: expected true or false.")
    if "int" in type_text and "float" not in type_text:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected an integer.") from None
    if "float" in type_text:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number.") from None
    return text


def flat_fields() -> Dict[str, Tuple[str, Any]]:
    """Flat key -> (section, its dataclass field), sections in RunConfig's order: what the flag
    table (``fastdllm_warmstart.flags``) is generated from."""
    by_section = {name: {f.name: f for f in fields(cls)} for name, cls in _SECTIONS.items()}
    out = {}
    for section in _SECTIONS:
        for flat, (sec, fname) in _FLAT.items():
            if sec == section:
                out[flat] = (section, by_section[section][fname])
    return out


def parse_flat_value(key: str, text: Any) -> Any:
    """One flat setting's value from its text (``"0.6"`` -> 0.6, ``"none"`` -> None where None
    is allowed); a bad one raises :class:`ConfigError` naming the key."""
    section, fname = _FLAT[key]
    return _coerce(key, text, {f.name: f.type for f in fields(_SECTIONS[section])}[fname])


def configs_from_flat(values: Optional[Mapping[str, Any]] = None, *, strict: bool = True,
                      **kwargs: Any) -> RunConfig:
    """Build a :class:`RunConfig` from flat keys (``warm_init='embed'``, ``alpha='0.6'``...).

    ``None`` values mean "unset" and keep the default. Unknown keys raise :class:`ConfigError`
    listing the valid ones when ``strict``.
    """
    merged: Dict[str, Any] = dict(values or {})
    merged.update(kwargs)
    per_section: Dict[str, Dict[str, Any]] = {name: {} for name in _SECTIONS}
    unknown = []
    for key, raw in merged.items():
        norm = key.replace("-", "_")
        if norm not in _FLAT:
            unknown.append(key)
            continue
        if raw is None:
            continue
        section, fname = _FLAT[norm]
        ftype = {f.name: f.type for f in fields(_SECTIONS[section])}[fname]
        per_section[section][fname] = _coerce(norm, raw, ftype)
    if unknown and strict:
        raise ConfigError(f"Unknown setting(s): {', '.join(sorted(unknown))}. "
                          f"Valid settings: {', '.join(FLAT_KEYS)}.")
    built = {name: _SECTIONS[name](**vals) for name, vals in per_section.items()}
    return RunConfig(**built)

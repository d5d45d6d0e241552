"""APD's settings (one section of :class:`~fastdllm_warmstart.config.RunConfig`, flat keys ``apd``,
``apd_mixture``, ``apd_max_parallel``, ``apd_bridge_tau``), and the settings grids the peers
preset sweeps. Kept beside the method; ``config.py`` registers the section. Imports only the leaf
``config_fields``."""

from __future__ import annotations

from dataclasses import dataclass

from ..config_fields import ConfigError, _check_int, _check_range, setting

# Grids of the peers sweep (presets/sweep_peers.json). R: the paper sweeps 0.1-0.8 (its Fig. 3)
# and defaults to 0.7; higher R trusts the dLLM more (longer runs, fewer forwards).
APD_MIXTURE_GRID = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9)
# Across the tokenizer bridge the mixture has no common vocabulary; tau plays R's part (high tau
# = strict, like low R).
APD_BRIDGE_TAU_GRID = (0.9, 0.5, 0.3, 0.1, 0.03, 0.01)


@dataclass(frozen=True)
class ApdConfig:
    """Adaptive Parallel Decoding (arXiv 2506.00413) as a decoding mode (``fastdllm_warmstart.apd``):
    each step the dLLM samples the next ``max_parallel`` masked positions of the block, the aux
    AR model scores that run in one forward, and the longest prefix on which the mixture's sample
    agrees with the dLLM's is committed (its first token always). The aux model is ``aux_model``."""

    enabled: bool = setting(False, "decode with APD: the aux AR model accepts the longest agreeing "
                                   "prefix of the dLLM's parallel sample (replaces the threshold rule)")
    # The paper's R (its demo's default 0.7): target logits R z_dLLM + (1 - R) z_AR. 1 accepts every
    # token the dLLM proposed; 0 accepts where the AR model's own sample agrees.
    mixture: float = setting(0.7, "R: target logits R z_dLLM + (1 - R) z_AR (needs an aux on the "
                                  "dLLM's vocabulary, e.g. embedded:tiny-aux-dllmtok)")
    # The paper's max_lookahead bounds the masked input (100 on Dream's 256 tokens); here the block
    # bounds it already, so this caps the run per step (16 = half of the default 32-token block).
    max_parallel: int = setting(16, "k: most tokens the dLLM proposes (and the aux scores) per step")
    # Across the tokenizer bridge (an aux with its own tokenizer): accept a dLLM token whose text the
    # aux gives at least this probability (or would write greedily). 1: only the aux's greedy text.
    bridge_tau: float = setting(0.3, "across the tokenizer bridge: accept a dLLM token whose text the "
                                     "aux gives at least this (or writes greedily)")

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"apd must be true or false, got {self.enabled!r}.")
        _check_range("apd_mixture", self.mixture, 0.0, 1.0)
        _check_int("apd_max_parallel", self.max_parallel, 1)
        _check_range("apd_bridge_tau", self.bridge_tau, 0.0, 1.0, lo_open=True)


__all__ = ["APD_BRIDGE_TAU_GRID", "APD_MIXTURE_GRID", "ApdConfig"]

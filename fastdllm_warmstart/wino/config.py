"""WINO's settings: one section of :class:`~fastdllm_warmstart.config.RunConfig` (flat keys ``wino``,
``wino_tau_in``, ``wino_tau_out``, ``wino_cap``), kept beside the method; ``config.py`` registers
the section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config_fields import ConfigError, _check_range, setting


@dataclass(frozen=True)
class WinoConfig:
    """WINO decoding (arXiv 2507.18578, :mod:`fastdllm_warmstart.wino.decoding`). Defaults: the
    authors' LLaDA GSM8K settings (their released ``configs/gsm8k.yaml``)."""

    enabled: bool = setting(False, "WINO decoding: wide-in commits at --wino-tau-in, narrow-out "
                                   "re-masks below --wino-tau-out (replaces --threshold/--factor)")
    # Wide in: low on purpose; the narrow-out takes back what the model no longer supports.
    tau_in: float = setting(0.6, "wino: commit every masked block position whose confidence exceeds this")
    tau_out: float = setting(0.9, "wino: re-mask a decoded block token its masked shadow gives less than this")
    # The released code caps a step's commits (min(max(0.7 m, 5), 20)) and re-masks (the previous
    # step's commits - 1); off: the rule without them.
    cap: bool = setting(True, "wino: the released code's caps on commits and re-masks per step")

    def __post_init__(self) -> None:
        for name in ("enabled", "cap"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"wino{'' if name == 'enabled' else '_' + name} must be true or false.")
        _check_range("wino_tau_in", self.tau_in, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_range("wino_tau_out", self.tau_out, 0.0, 1.0, lo_open=True)

    def check_run(self, run: Any) -> None:
        """The settings of a :class:`~fastdllm_warmstart.config.RunConfig` WINO cannot run with."""
        by_rule = run.remask_by_wino
        if by_rule and run.decode.factor is not None:
            raise ConfigError("remask_rule=wino replaces the commit rule with WINO's wide-in; drop factor, "
                              "or pick another remask_rule.")
        if not self.enabled:
            return
        if run.decode.factor is not None:
            raise ConfigError("wino=true replaces the commit rule with its wide-in; drop factor.")
        if run.remask.enabled and run.remask.rule not in ("auto", "wino"):
            raise ConfigError(f"wino=true judges the draft itself (its narrow-out re-masks weak priors), "
                              f"remask_rule={run.remask.rule} would judge it again; drop remask, or use "
                              f"remask_rule=wino (the same decoding).")
        if run.warm.warm_init == "embed" and not by_rule:
            raise ConfigError("wino=true judges tokens on the canvas; use warm_init=token (or none), or "
                              "remask_rule=wino (lays the draft as tokens).")


__all__ = ["WinoConfig"]

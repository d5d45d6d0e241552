"""The one place that decides whether a prompt goes through a tokenizer's chat template.

The rule, for the dLLM (``apply_chat_template`` / lm-eval's ``chat_template``) and for the aux
model (``aux_chat_template``) alike: unset (None) means "iff the tokenizer has a template"
(Instruct models do, base models and the embedded tiny models do not); true requires one; false
never uses it.
"""

from __future__ import annotations

from typing import Any, Optional

from .config import ConfigError


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer: Any, asked: Optional[bool], *, setting: str, which: str = "dLLM",
                      fix: Optional[str] = None) -> bool:
    """Whether to apply ``tokenizer``'s chat template; ``asked=True`` without one raises
    :class:`ConfigError` naming ``setting`` and the fix."""
    has = has_chat_template(tokenizer)
    if asked is None:
        return has
    if asked and not has:
        raise ConfigError(f"{setting}=true but the {which} tokenizer has no chat template; "
                          f"{fix or f'leave {setting} unset or set it to false'}.")
    return bool(asked)


def as_user_turn(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as one user turn of the chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)

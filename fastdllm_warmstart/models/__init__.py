"""Model classes shipped with the plugin."""

from .tiny_llada import TinyLLaDAConfig, TinyLLaDAModelLM, register_auto_classes

register_auto_classes()

__all__ = ["TinyLLaDAConfig", "TinyLLaDAModelLM", "register_auto_classes"]

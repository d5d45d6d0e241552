"""Model classes shipped with the plugin."""

from .tiny_dream import TinyDreamConfig, TinyDreamModelLM
from .tiny_dream import register_auto_classes as _register_tiny_dream
from .tiny_llada import TinyLLaDAConfig, TinyLLaDAModelLM, register_auto_classes

register_auto_classes()
_register_tiny_dream()

__all__ = ["TinyDreamConfig", "TinyDreamModelLM", "TinyLLaDAConfig", "TinyLLaDAModelLM",
           "register_auto_classes"]

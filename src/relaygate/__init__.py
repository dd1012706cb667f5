"""relaygate: a self-hosted LLM API gateway and importable library.

The public API is listed in `__all__`; names load lazily so `import relaygate` stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaygate.config.model import Config
    from relaygate.errors import RelaygateError
    from relaygate.gateway import Gateway

__all__ = ["Config", "Gateway", "RelaygateError", "__version__", "load_config"]
__version__ = "0.1.0"

_LAZY = {
    "Config": "relaygate.config.model",
    "Gateway": "relaygate.gateway",
    "RelaygateError": "relaygate.errors",
    "load_config": "relaygate.config.load",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relaygate' has no attribute {name!r}")

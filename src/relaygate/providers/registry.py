"""Finds provider modules by name (every public module in this package is one) and builds them."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, cast

from relaygate.errors import ConfigError

if TYPE_CHECKING:
    from relaygate.config.model import ProviderConfig
    from relaygate.providers.base import Provider, ProviderMeta

_NOT_PROVIDERS = frozenset({"base", "registry"})
DEFAULT_TYPE = "openai"  # a configured provider with no type and a custom name speaks OpenAI
FALLBACK = "echo"  # enabled when no other provider is configured (SPEC §1)


@cache
def builtin_names() -> tuple[str, ...]:
    import relaygate.providers as pkg

    return tuple(
        sorted(
            m.name
            for m in pkgutil.iter_modules(pkg.__path__)
            if not m.name.startswith("_") and m.name not in _NOT_PROVIDERS
        )
    )


@cache
def aliases() -> dict[str, str]:
    """Other names of built-in providers (`google` -> `gemini`)."""
    found: dict[str, str] = {}
    for kind in builtin_names():
        meta = module_meta(kind)
        for alias in meta.name_aliases if meta is not None else ():
            found[alias] = kind
    return found


def canonical(name: str) -> str:
    """A built-in provider's own name for one of its aliases; any other name as it is."""
    return aliases().get(name, name)


def module_for(name: str, type_: str | None) -> str:
    """The module that speaks for a configured provider: its `type`, else its own name."""
    if type_:
        return canonical(type_)
    name = canonical(name)
    return name if name in builtin_names() else DEFAULT_TYPE


@cache
def _module(kind: str) -> ModuleType | None:
    if kind not in builtin_names():
        return None
    return importlib.import_module(f"relaygate.providers.{kind}")


def module_meta(kind: str) -> ProviderMeta | None:
    module = _module(kind)
    return None if module is None else cast("ProviderMeta", module.META)


def create(name: str, config: ProviderConfig) -> Provider:
    kind = module_for(name, config.type)
    module = _module(kind)
    if module is None:
        known = ", ".join(builtin_names())
        raise ConfigError(
            f"providers.{name}.type: unknown provider type {kind!r} (one of: {known})"
        )
    provider: Provider = module.Provider(name, config)
    return provider

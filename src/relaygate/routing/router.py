"""Model names to an ordered list of targets (SPEC §3). Pure: no I/O, no provider names.

The hot path is dict lookups: the names providers list (configured, and discovered in the
background by routing/discovery.py) are merged into one table when a listing arrives, and whole
answers are kept in a bounded table of names already resolved."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from relaygate.config.model import RoutingConfig
from relaygate.errors import InvalidRequest, ModelNotFound
from relaygate.providers.base import Provider
from relaygate.types import Target

_MAX_DEPTH = 8
_MAX_CACHED = (
    4096  # resolved names kept; the table starts afresh when full (names are the client's)
)
WILDCARD = "*"  # `aliases: {"*": target}`: where any name nothing else knows goes


def provider_aliases(providers: Mapping[str, Provider]) -> dict[str, str]:
    """Other names of configured providers (`google` for `gemini`): a built-in provider
    configured under its own name answers to its module's aliases too."""
    found: dict[str, str] = {}
    for name, provider in providers.items():
        if name != provider.meta.kind:
            continue
        for alias in provider.meta.name_aliases:
            if alias not in providers:
                found[alias] = name
    return found


class Router:
    def __init__(self, routing: RoutingConfig, providers: Mapping[str, Provider]) -> None:
        self.routing = routing
        self.providers = providers
        self.names = {name: name for name in providers}
        self.names.update(provider_aliases(providers))
        self.default_models = {
            self.names.get(p, p): self._own(self.names.get(p, p), m)
            for p, m in routing.default_models.items()
        }
        self.priority = [self.names.get(p, p) for p in routing.priority]
        self.discovered: dict[str, list[str]] = {}
        self._known: frozenset[tuple[str, str]] | None = None
        self._listed: dict[str, Target] = {}
        self._cache: dict[str, list[Target]] = {}
        self._rebuild()

    def _own(self, provider: str, model: str) -> str:
        """A default model written with its own provider's prefix (`groq:gemma2-9b-it`, the
        AI Forwarder's form) is the bare model; any other name is the provider's model id."""
        prefix, found, rest = model.partition(":")
        if found and rest and self.names.get(prefix) == provider:
            return rest
        return model

    # --- what providers list --------------------------------------------------------------------
    def learn(self, provider: str, models: Iterable[str]) -> None:
        """A provider's listing arrived: its names are merged into the lookup table."""
        listed = [m for m in dict.fromkeys(models) if m]
        if self.discovered.get(provider) == listed:
            return
        self.discovered[provider] = listed
        self._rebuild()

    def listed(self, provider: str) -> list[str]:
        """Configured models first, then the discovered ones."""
        p = self.providers[provider]
        return list(dict.fromkeys([*p.models(), *self.discovered.get(provider, ())]))

    def _rebuild(self) -> None:
        """Bare name -> target. A configured list wins over a discovered one; a name more than
        one provider discovered goes to the first of them in priority order."""
        order = [p for p in dict.fromkeys([*self.priority, *self.providers]) if p in self.providers]
        table: dict[str, Target] = {}
        for name in order:
            for model in self.providers[name].models():
                table.setdefault(model, Target(name, model))
        for name in order:
            for model in self.discovered.get(name, ()):
                table.setdefault(model, Target(name, model))
        self._listed = table
        self._cache = {}
        self._known = None

    # --- resolving ------------------------------------------------------------------------------
    def default_model(self, provider: str) -> str | None:
        found = self.default_models.get(provider)
        if found:
            return found
        p = self.providers.get(provider)
        if p is None:
            return None
        return p.config.default_model or (p.models()[0] if p.models() else None)

    def resolve(self, model: str | None) -> list[Target]:
        if not model:
            return self._priority_chain()
        cached = self._cache.get(model)
        if cached is not None:
            return list(cached)
        targets: list[Target] = []
        self._resolve(model, targets, depth=0)
        seen: set[tuple[str, str]] = set()
        unique = []
        for t in targets:
            if (t.provider, t.model) not in seen:
                seen.add((t.provider, t.model))
                unique.append(t)
        if len(self._cache) >= _MAX_CACHED:
            self._cache = {}
        self._cache[model] = unique
        return list(unique)

    def _priority_chain(self) -> list[Target]:
        chain = self.priority or list(self.providers)
        targets = []
        for name in chain:
            model = self.default_model(name)
            if name in self.providers and model:
                targets.append(Target(name, model))
        if not targets:
            raise InvalidRequest(
                "No model given and no default model configured "
                "(PROVIDERS_PRIORITY with <P>_MODEL, or routing.default_models).",
                param="model",
                code="model_required",
            )
        return targets

    def _resolve(self, name: str, out: list[Target], *, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ModelNotFound(name)
        if name in self.routing.aliases and name != WILDCARD:
            self._resolve(self.routing.aliases[name], out, depth=depth + 1)
            return
        if name in self.routing.groups:
            for member in self.routing.groups[name]:
                self._resolve(member, out, depth=depth + 1)
            return
        found = self._single(name)
        if found is not None:
            out.append(found)
        elif WILDCARD in self.routing.aliases and depth == 0:
            self._resolve(self.routing.aliases[WILDCARD], out, depth=depth + 1)
        else:
            raise ModelNotFound(name)

    def _single(self, name: str) -> Target | None:
        for sep in ("/", ":"):
            prefix, found, rest = name.partition(sep)
            provider = self.names.get(prefix) if found and rest else None
            if provider is not None:
                return Target(provider, rest)
        for p in self.providers.values():
            if p.claims(name):
                return Target(p.name, name)
        return self._listed.get(name)

    def model_ids(self) -> list[str]:
        """Every routable model id and alias, for GET /v1/models."""
        ids: list[str] = []
        for name in self.providers:
            models = self.listed(name)
            default = self.default_model(name)
            if default and default not in models:
                models.append(default)
            ids += [f"{name}/{m}" for m in models]
        ids += [a for a in self.routing.aliases if a != WILDCARD] + list(self.routing.groups)
        return list(dict.fromkeys(ids))

    def is_known(self, target: Target) -> bool:
        """Whether a target names a configured or discovered model (a provider's list or
        default, or an alias or group member): metrics label the others `other`, so made-up
        names stay bounded."""
        known = self._known
        if known is None:
            pairs = {
                (name, m)
                for name in self.providers
                for m in (*self.listed(name), self.default_model(name))
                if m
            }
            for entry in (*self.routing.aliases.values(), *self.routing.groups.values()):
                for member in [entry] if isinstance(entry, str) else entry:
                    found = self._single(member)
                    if found is not None:
                        pairs.add((found.provider, found.model))
            known = self._known = frozenset(pairs)
        return (target.provider, target.model) in known

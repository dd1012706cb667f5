"""Model names to an ordered list of targets (SPEC §3). Pure: no I/O, no provider names."""

from __future__ import annotations

from collections.abc import Mapping

from relaygate.config.model import RoutingConfig
from relaygate.errors import InvalidRequest, ModelNotFound
from relaygate.providers.base import Provider
from relaygate.types import Target

_MAX_DEPTH = 8


class Router:
    def __init__(self, routing: RoutingConfig, providers: Mapping[str, Provider]) -> None:
        self.routing = routing
        self.providers = providers
        self._known: frozenset[tuple[str, str]] | None = None

    def default_model(self, provider: str) -> str | None:
        found = self.routing.default_models.get(provider)
        if found:
            return found
        p = self.providers.get(provider)
        if p is None:
            return None
        return p.config.default_model or (p.models()[0] if p.models() else None)

    def resolve(self, model: str | None) -> list[Target]:
        if not model:
            return self._priority_chain()
        targets: list[Target] = []
        self._resolve(model, targets, depth=0)
        seen: set[tuple[str, str]] = set()
        unique = []
        for t in targets:
            if (t.provider, t.model) not in seen:
                seen.add((t.provider, t.model))
                unique.append(t)
        return unique

    def _priority_chain(self) -> list[Target]:
        chain = self.routing.priority or list(self.providers)
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
        if name in self.routing.aliases:
            self._resolve(self.routing.aliases[name], out, depth=depth + 1)
            return
        if name in self.routing.groups:
            for member in self.routing.groups[name]:
                self._resolve(member, out, depth=depth + 1)
            return
        out.append(self._single(name))

    def _single(self, name: str) -> Target:
        for sep in ("/", ":"):
            prefix, found, rest = name.partition(sep)
            if found and rest and prefix in self.providers:
                return Target(prefix, rest)
        claimed = [p for p in self.providers.values() if p.claims(name)]
        if claimed:
            return Target(claimed[0].name, name)
        for provider in self.providers.values():
            if name in provider.models():
                return Target(provider.name, name)
        raise ModelNotFound(name)

    def model_ids(self) -> list[str]:
        """Every routable model id and alias, for GET /v1/models."""
        ids: list[str] = []
        for name, provider in self.providers.items():
            models = list(provider.models())
            default = self.default_model(name)
            if default and default not in models:
                models.append(default)
            ids += [f"{name}/{m}" for m in models]
        ids += list(self.routing.aliases) + list(self.routing.groups)
        return list(dict.fromkeys(ids))

    def is_known(self, target: Target) -> bool:
        """Whether a target names a configured model (a provider's list or default, or an alias
        or group member): metrics label the others `other`, so made-up names stay bounded."""
        known = self._known
        if known is None:
            pairs = {
                (name, m)
                for name in self.providers
                for m in (*self.providers[name].models(), self.default_model(name))
                if m
            }
            for entry in (*self.routing.aliases.values(), *self.routing.groups.values()):
                for member in [entry] if isinstance(entry, str) else entry:
                    try:
                        found = self._single(member)
                    except ModelNotFound:
                        continue
                    pairs.add((found.provider, found.model))
            known = self._known = frozenset(pairs)
        return (target.provider, target.model) in known

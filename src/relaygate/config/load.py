"""Where configuration comes from (SPEC §2), later wins:
defaults < YAML file < `.env` in the working directory < process environment < CLI flags."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from relaygate.config.model import MIN_CLIENT_KEY, Config
from relaygate.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEFAULT_KEYS_FILE = "keys/forwarder_api_keys.txt"


def merged_environ(
    cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`.env` in the working directory, overridden by the process environment."""
    base = Path.cwd() if cwd is None else cwd
    env: dict[str, str] = {}
    dotenv = base / ".env"
    if dotenv.is_file():
        env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    env.update(os.environ if environ is None else environ)
    return env


def _expand(value: Any, env: Mapping[str, str], where: str, path: str) -> Any:
    if isinstance(value, dict):
        return {
            k: _expand(v, env, where, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, env, where, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: {path}: ${{{name}}} is not set and has no default")

    return _VAR.sub(sub, value)


def _read_yaml(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    expanded = _expand(raw, env, str(path), "")
    assert isinstance(expanded, dict)
    return expanded


def _validate(data: Mapping[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {loc}: {first['msg']}{more}") from None


def _in(cwd: Path, name: str) -> Path:
    """A path as the user wrote it, relative to the working directory."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else cwd / path


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    if explicit:
        return _in(cwd, explicit)
    if env.get("RELAYGATE_CONFIG"):
        return _in(cwd, env["RELAYGATE_CONFIG"])
    default = cwd / "relaygate.yaml"
    return default if default.is_file() else None


def _env_keys(env: Mapping[str, str], prefix: str) -> list[str]:
    """`<P>_API_KEY`, `<P>_API_KEY_<N>` (in N order) and `<P>_API_KEYS` (comma-separated)."""
    found: list[str] = []
    if env.get(f"{prefix}_API_KEY"):
        found.append(env[f"{prefix}_API_KEY"].strip())
    numbered = re.compile(rf"^{re.escape(prefix)}_API_KEY_(\d+)$")
    hits = sorted((int(m.group(1)), v) for k, v in env.items() if (m := numbered.match(k)) and v)
    found += [v.strip() for _, v in hits]
    found += [p.strip() for p in env.get(f"{prefix}_API_KEYS", "").split(",") if p.strip()]
    return found


def env_prefixes(name: str, aliases: Iterable[str] = ()) -> list[str]:
    return [name.upper().replace("-", "_"), *aliases]


def _apply_provider_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    from relaygate.providers import registry  # local: provider modules are found lazily

    providers: dict[str, Any] = data.setdefault("providers", {})
    routing: dict[str, Any] = data.setdefault("routing", {})
    for alias, name in registry.aliases().items():  # `google:` in YAML is the gemini provider
        given = providers.get(alias)
        if isinstance(given, dict) and not given.get("type") and name not in providers:
            providers[name] = providers.pop(alias)
    names = set(providers) | set(registry.builtin_names())
    for name in sorted(names):
        meta = registry.module_meta(registry.module_for(name, providers.get(name, {}).get("type")))
        aliases = meta.env_aliases if meta is not None and name in registry.builtin_names() else ()
        keys: list[str] = []
        base_url = model = None
        for prefix in env_prefixes(name, aliases):
            keys += _env_keys(env, prefix)
            base_url = base_url or env.get(f"{prefix}_BASE_URL") or None
            model = model or env.get(f"{prefix}_MODEL") or None
        exists = name in providers
        keyless = meta is not None and not meta.needs_key
        if not exists and not keys and not (keyless and base_url):
            continue
        entry: dict[str, Any] = providers.setdefault(name, {})
        if keys:
            current = entry.get("keys") or []
            if isinstance(current, str):
                current = [p.strip() for p in current.split(",") if p.strip()]
            known = {k if isinstance(k, str) else k.get("key") for k in current}
            entry["keys"] = list(current) + [k for k in dict.fromkeys(keys) if k not in known]
        if base_url:
            entry["base_url"] = base_url
        if model:
            routing.setdefault("default_models", {})[name] = model
    if env.get("PROVIDERS_PRIORITY"):
        routing["priority"] = env["PROVIDERS_PRIORITY"]
        routing["priority_source"] = "PROVIDERS_PRIORITY"


def _read_keys_file(path: Path) -> list[tuple[int, str]]:
    """(line number, key) of every key line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the keys file ({exc.strerror})") from None
    found = [(n, ln.strip()) for n, ln in enumerate(lines, 1)]
    return [(n, key) for n, key in found if key and not key.startswith("#")]


def _client(name: str, key: str, where: str) -> dict[str, str]:
    """A static client key; a short one is refused here, where its source can be named."""
    if len(key) < MIN_CLIENT_KEY:
        raise ConfigError(f"{where}: a client key needs at least {MIN_CLIENT_KEY} characters")
    return {"name": name, "key": key}


def _apply_client_env(data: dict[str, Any], env: Mapping[str, str], cwd: Path) -> None:
    clients: list[Any] = data.setdefault("clients", [])
    if env.get("PROXY_API_KEY"):
        key = env["PROXY_API_KEY"].strip()
        clients.append(_client("proxy-api-key", key, "environment: PROXY_API_KEY"))
    for i, pair in enumerate(p for p in env.get("CLIENT_API_KEYS_MAP", "").split(",") if p.strip()):
        key, _, name = pair.strip().partition(":")
        label = name.strip() or f"client-{i + 1}"
        where = f"environment: CLIENT_API_KEYS_MAP: entry {i + 1} ({label})"
        clients.append(_client(label, key.strip(), where))
    path = keys_file_path(env, data.get("keys_file"), cwd)
    explicit = bool(env.get("RELAYGATE_KEYS_FILE") or data.get("keys_file"))
    if explicit or path.is_file():
        for i, (line, key) in enumerate(_read_keys_file(path)):
            client = _client(f"keys-file-{i + 1}", key, f"{path}: line {line}")
            clients.append({**client, "from_keys_file": True})
    data["keys_file"] = str(path)  # watched while the server runs, created by generate-key


def keys_file_path(env: Mapping[str, str], configured: str | None, cwd: Path) -> Path:
    """RELAYGATE_KEYS_FILE, else the config's keys_file, else keys/forwarder_api_keys.txt."""
    name = env.get("RELAYGATE_KEYS_FILE") or configured or DEFAULT_KEYS_FILE
    return _in(cwd, name)


_SCALARS = {
    "ADMIN_SECRET": ("admin_secret",),
    "CLIENT_KEY_ROTATION": ("client_key_rotation",),
    "REDIS_URL": ("redis_url",),
    "DATABASE_URL": ("database_url",),
    "LOG_LEVEL": ("server", "log_level"),
    "PORT": ("server", "port"),
}


def _apply_scalars(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, path in _SCALARS.items():
        if env.get(var):
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = env[var]
    if env.get("DEBUG", "").lower() in {"1", "true", "yes", "on"}:
        data.setdefault("server", {})["log_level"] = "debug"
    if env.get("RELAYGATE_LOG_JSON", "").lower() in {"1", "true", "yes", "on"}:
        data.setdefault("server", {})["log_json"] = True


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif value is not None:
            base[key] = value
    return base


def load_config(
    path: str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Build the one validated Config. Raises ConfigError with a one-line message."""
    here = Path.cwd() if cwd is None else cwd
    env = merged_environ(here, environ)
    file = find_config_file(path, env, here)
    data: dict[str, Any] = _read_yaml(file, env) if file is not None else {}
    where = str(file) if file is not None else "defaults"
    _validate(data, where)  # names the file when the file itself is wrong
    _apply_provider_env(data, env)
    _apply_client_env(data, env, here)
    _apply_scalars(data, env)
    if overrides:
        _merge(data, overrides)
    config = _validate(data, f"{where} + environment" if file is not None else "environment")
    _check_types(config, where)
    _check_priority(config, where)
    config.source = where
    return config


def _check_priority(config: Config, where: str) -> None:
    """Every name in the priority chain is a provider (configured, built in, or an alias of
    one): a typo stops start-up instead of silently shortening the chain."""
    from relaygate.providers import registry

    known = set(config.providers) | set(registry.builtin_names()) | set(registry.aliases())
    for name in config.routing.priority:
        if name not in known:
            source = config.routing.priority_source or f"{where}: routing.priority"
            listed = ", ".join(sorted(known))
            raise ConfigError(f"{source}: unknown provider {name!r} (known: {listed})")


def _check_types(config: Config, where: str) -> None:
    """Every provider speaks a known wire format (its `type`, else its name, else openai)."""
    from relaygate.providers import registry

    for name, spec in config.providers.items():
        kind = registry.module_for(name, spec.type)
        if kind not in registry.builtin_names():
            known = ", ".join(registry.builtin_names())
            raise ConfigError(
                f"{where}: providers.{name}.type: unknown provider type {kind!r} (one of: {known})"
            )

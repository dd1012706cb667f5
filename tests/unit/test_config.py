"""SPEC §2: where configuration comes from and in which order, the environment conventions, and a
bad config stopping start-up with one line that names the field and the file."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relaygate.config import load_config
from relaygate.errors import ConfigError
from relaygate.providers import registry
from tests.integration._proc import clean_env


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def keys_of(cfg, provider: str) -> list[str]:
    return [k.key for k in cfg.providers[provider].keys]


def kid(provider: str, key: str) -> str:
    return f"{provider}:{hashlib.sha256(key.encode()).hexdigest()[:8]}"


# --- YAML and ${VAR} -------------------------------------------------------------------------


def test_yaml_with_vars_and_defaults(tmp_path):
    path = write(
        tmp_path / "relaygate.yaml",
        """
        providers:
          local:
            type: openai
            base_url: ${LOCAL_URL:-http://127.0.0.1:8001/v1}
            keys: ["${LOCAL_KEY}", "k-${SUFFIX:-plain}"]
            models: [qwen3-8b]
            timeout_s: ${TIMEOUT:-42}
        routing:
          aliases: {fast: "local/${MODEL_NAME:-qwen3-8b}"}
        """,
    )
    cfg = load_config(
        str(path), environ={"LOCAL_KEY": "sk-from-env", "MODEL_NAME": "m2"}, cwd=tmp_path
    )
    local = cfg.providers["local"]
    assert local.base_url == "http://127.0.0.1:8001/v1"
    assert keys_of(cfg, "local") == ["sk-from-env", "k-plain"]
    assert local.timeout_s == 42.0
    assert cfg.routing.aliases == {"fast": "local/m2"}
    assert cfg.source == str(path)


def test_relaygate_yaml_in_the_working_directory_is_found(tmp_path):
    write(tmp_path / "relaygate.yaml", "server: {port: 9123}\n")
    assert load_config(environ={}, cwd=tmp_path).server.port == 9123


def test_relaygate_config_env_names_the_file(tmp_path):
    write(tmp_path / "elsewhere.yaml", "server: {port: 9124}\n")
    write(tmp_path / "relaygate.yaml", "server: {port: 9125}\n")
    env = {"RELAYGATE_CONFIG": str(tmp_path / "elsewhere.yaml")}
    assert load_config(environ=env, cwd=tmp_path).server.port == 9124


def test_relative_paths_are_read_from_the_working_directory(tmp_path):
    write(tmp_path / "conf" / "gw.yaml", "server: {port: 9126}\n")
    write(tmp_path / "k.txt", "rg-from-relative-keys-file\n")
    env = {"RELAYGATE_CONFIG": "conf/gw.yaml", "RELAYGATE_KEYS_FILE": "k.txt"}
    cfg = load_config(environ=env, cwd=tmp_path)
    assert cfg.server.port == 9126
    assert [c.key for c in cfg.clients] == ["rg-from-relative-keys-file"]
    assert load_config("conf/gw.yaml", environ={}, cwd=tmp_path).server.port == 9126


def test_no_file_no_env_gives_the_defaults(tmp_path):
    cfg = load_config(environ={}, cwd=tmp_path)
    assert cfg.providers == {} and cfg.clients == []
    assert cfg.server.port == 8000 and cfg.source == "defaults"


# --- .env and the environment -----------------------------------------------------------------


def test_dotenv_in_the_working_directory_is_read(tmp_path):
    write(tmp_path / ".env", "OPENAI_API_KEY=sk-dotenv\nADMIN_SECRET=dotenv-secret-123\n")
    cfg = load_config(environ={}, cwd=tmp_path)
    assert keys_of(cfg, "openai") == ["sk-dotenv"]
    assert cfg.admin_secret == "dotenv-secret-123"


def test_process_environment_overrides_dotenv(tmp_path):
    write(tmp_path / ".env", "ADMIN_SECRET=dotenv-secret-123\nOPENAI_BASE_URL=http://dotenv/v1\n")
    env = {"ADMIN_SECRET": "env-secret-456", "OPENAI_API_KEY": "sk-env"}
    cfg = load_config(environ=env, cwd=tmp_path)
    assert cfg.admin_secret == "env-secret-456"
    assert cfg.providers["openai"].base_url == "http://dotenv/v1"


def test_dotenv_values_expand_in_yaml(tmp_path):
    write(tmp_path / ".env", "GROQ_KEY=gsk-dotenv\n")
    path = write(tmp_path / "relaygate.yaml", "providers: {groq: {keys: ['${GROQ_KEY}']}}\n")
    cfg = load_config(str(path), environ={}, cwd=tmp_path)
    assert keys_of(cfg, "groq") == ["gsk-dotenv"]


def test_precedence_yaml_dotenv_env_cli(tmp_path):
    path = write(tmp_path / "relaygate.yaml", "server: {port: 7000, log_level: warning}\n")
    assert load_config(str(path), environ={}, cwd=tmp_path).server.port == 7000
    write(tmp_path / ".env", "PORT=7001\nLOG_LEVEL=error\n")
    assert load_config(str(path), environ={}, cwd=tmp_path).server.port == 7001
    cfg = load_config(str(path), environ={"PORT": "7002"}, cwd=tmp_path)
    assert cfg.server.port == 7002 and cfg.server.log_level == "error"
    cli = load_config(
        str(path), environ={"PORT": "7002"}, cwd=tmp_path, overrides={"server": {"port": 7003}}
    )
    assert cli.server.port == 7003 and cli.server.log_level == "error"


def test_cli_overrides_win_over_everything(tmp_path):
    write(tmp_path / ".env", "LOG_LEVEL=error\n")
    overrides = {"server": {"log_level": "debug", "host": "0.0.0.0", "port": None}}
    cfg = load_config(environ={"PORT": "7010"}, cwd=tmp_path, overrides=overrides)
    assert cfg.server.log_level == "debug" and cfg.server.host == "0.0.0.0"
    assert cfg.server.port == 7010  # an unset flag (None) changes nothing


# --- provider keys: every form adds to one pool -----------------------------------------------


def test_all_key_forms_add_to_one_pool(tmp_path):
    env = {
        "OPENAI_API_KEY": "sk-single",
        "OPENAI_API_KEY_2": "sk-n2",
        "OPENAI_API_KEY_10": "sk-n10",
        "OPENAI_API_KEY_1": "sk-n1",
        "OPENAI_API_KEYS": " sk-list-a , sk-list-b,,sk-single ",
    }
    cfg = load_config(environ=env, cwd=tmp_path)
    assert keys_of(cfg, "openai") == [
        "sk-single",
        "sk-n1",
        "sk-n2",
        "sk-n10",
        "sk-list-a",
        "sk-list-b",
    ]


def test_env_keys_add_to_the_yaml_pool(tmp_path):
    path = write(
        tmp_path / "relaygate.yaml",
        "providers: {groq: {keys: 'gsk_a,gsk_b', key_strategy: round_robin}}\n",
    )
    cfg = load_config(str(path), environ={"GROQ_API_KEYS": "gsk_b,gsk_c"}, cwd=tmp_path)
    assert keys_of(cfg, "groq") == ["gsk_a", "gsk_b", "gsk_c"]
    assert cfg.providers["groq"].key_strategy == "round_robin"


def test_builtin_providers_appear_only_with_keys(tmp_path):
    cfg = load_config(environ={"GROQ_API_KEY": "gsk_1", "OPENROUTER_API_KEY": ""}, cwd=tmp_path)
    assert set(cfg.providers) == {"groq"}


def test_configured_provider_names_take_keys_and_base_url_from_env(tmp_path):
    path = write(
        tmp_path / "relaygate.yaml",
        """
        providers:
          local: {type: openai, base_url: "http://127.0.0.1:1/v1", models: [m]}
          my-llm: {type: openai, base_url: "http://127.0.0.1:2/v1"}
        """,
    )
    env = {
        "LOCAL_API_KEY": "sk-local",
        "LOCAL_BASE_URL": "http://127.0.0.1:8001/v1",
        "MY_LLM_API_KEYS": "a1,a2",
    }
    cfg = load_config(str(path), environ=env, cwd=tmp_path)
    assert keys_of(cfg, "local") == ["sk-local"]
    assert cfg.providers["local"].base_url == "http://127.0.0.1:8001/v1"
    assert keys_of(cfg, "my-llm") == ["a1", "a2"]


def test_base_url_env(tmp_path):
    env = {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1"}
    cfg = load_config(environ=env, cwd=tmp_path)
    assert cfg.providers["openai"].base_url == "http://127.0.0.1:9999/v1"


def test_providers_priority_and_default_models(tmp_path):
    env = {
        "GROQ_API_KEY": "gsk_1",
        "OPENAI_API_KEY": "sk-1",
        "PROVIDERS_PRIORITY": "groq, openai",
        "GROQ_MODEL": "llama-3.1-8b-instant",
        "OPENAI_MODEL": "gpt-4o-mini",
    }
    cfg = load_config(environ=env, cwd=tmp_path)
    assert cfg.routing.priority == ["groq", "openai"]
    assert cfg.routing.default_models == {
        "groq": "llama-3.1-8b-instant",
        "openai": "gpt-4o-mini",
    }


@pytest.mark.skipif(
    "gemini" not in registry.builtin_names(), reason="the gemini provider does not exist yet"
)
def test_google_is_an_alias_of_gemini(tmp_path):
    env = {"GEMINI_API_KEY": "g-1", "GOOGLE_API_KEY": "g-2", "GOOGLE_API_KEYS": "g-3"}
    cfg = load_config(environ=env, cwd=tmp_path)
    assert sorted(keys_of(cfg, "gemini")) == ["g-1", "g-2", "g-3"]
    assert "google" not in cfg.providers


# --- client keys ------------------------------------------------------------------------------


def test_proxy_api_key_and_client_map(tmp_path):
    env = {
        "PROXY_API_KEY": "rg-proxy-key-123",
        "CLIENT_API_KEYS_MAP": "key-aaaa-1111:App One, key-bbbb-2222:AppTwo",
    }
    cfg = load_config(environ=env, cwd=tmp_path)
    assert [(c.name, c.key) for c in cfg.clients] == [
        ("proxy-api-key", "rg-proxy-key-123"),
        ("App One", "key-aaaa-1111"),
        ("AppTwo", "key-bbbb-2222"),
    ]


def test_default_keys_file(tmp_path):
    write(
        tmp_path / "keys" / "forwarder_api_keys.txt",
        "# comment\nfwd_key_one_111\n\n  fwd_key_two_222  \n",
    )
    cfg = load_config(environ={}, cwd=tmp_path)
    assert [c.key for c in cfg.clients] == ["fwd_key_one_111", "fwd_key_two_222"]


def test_relaygate_keys_file_env(tmp_path):
    write(tmp_path / "keys" / "forwarder_api_keys.txt", "fwd_default_key\n")
    other = write(tmp_path / "mine.txt", "fwd_other_key_1\n")
    cfg = load_config(environ={"RELAYGATE_KEYS_FILE": str(other)}, cwd=tmp_path)
    assert [c.key for c in cfg.clients] == ["fwd_other_key_1"]


def test_missing_keys_file_named_by_env_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"RELAYGATE_KEYS_FILE": str(tmp_path / "nope.txt")}, cwd=tmp_path)
    assert "nope.txt" in str(caught.value)


# --- a bad config: one line naming the field and the file --------------------------------------


def _one_line_error(path: Path | None, env: dict[str, str], cwd: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(str(path) if path else None, environ=env, cwd=cwd)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    assert "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("providers: {groq: {keys: [a], key_strategy: fastest}}\n", "providers.groq.key_strategy"),
        ("providers: {groq: {keys: [a], colour: blue}}\n", "providers.groq.colour"),
        ("servr: {port: 1}\n", "servr"),
        ("server: {port: not-a-port}\n", "server.port"),
        ("providers: {groq: {timeout_s: -1}}\n", "providers.groq.timeout_s"),
        ("clients: [{name: a, key: short}]\n", "clients.0.key"),
        ("providers: {x: {type: nonsense}}\n", "providers.x.type"),
    ],
)
def test_bad_field_names_the_field_and_the_file(tmp_path, yaml_text, field):
    path = write(tmp_path / "bad.yaml", yaml_text)
    message = _one_line_error(path, {}, tmp_path)
    assert field in message and str(path) in message


def test_bad_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "providers:\n  groq: {keys: [a\n  x: ]\n")
    message = _one_line_error(path, {}, tmp_path)
    assert str(path) in message and "YAML" in message and "line" in message


def test_unset_var_names_the_field_and_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "providers: {groq: {keys: ['${NOT_SET_ANYWHERE}']}}\n")
    message = _one_line_error(path, {}, tmp_path)
    assert "NOT_SET_ANYWHERE" in message and "providers.groq.keys" in message
    assert str(path) in message


def test_missing_config_file_is_one_line(tmp_path):
    message = _one_line_error(tmp_path / "absent.yaml", {}, tmp_path)
    assert "absent.yaml" in message


def test_bad_environment_value_names_the_field(tmp_path):
    message = _one_line_error(None, {"PORT": "eighty"}, tmp_path)
    assert "server.port" in message and "environment" in message


def test_log_level_is_checked_and_case_insensitive(tmp_path):
    assert load_config(environ={"LOG_LEVEL": "DEBUG"}, cwd=tmp_path).server.log_level == "debug"
    assert load_config(environ={"LOG_LEVEL": "Warning"}, cwd=tmp_path).server.log_level == (
        "warning"
    )
    message = _one_line_error(None, {"LOG_LEVEL": "verbose"}, tmp_path)
    assert "server.log_level" in message
    with pytest.raises(ConfigError, match=r"server\.log_level"):
        load_config(environ={}, cwd=tmp_path, overrides={"server": {"log_level": "loud"}})


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "bad.yaml", "- a\n- b\n")
    assert str(path) in _one_line_error(path, {}, tmp_path)


# --- the CLI: config check and a bad config at start-up -----------------------------------------


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", *args],
        cwd=cwd,
        env=clean_env(COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_config_check_prints_key_ids_never_keys(tmp_path):
    write(
        tmp_path / "relaygate.yaml",
        """
        providers:
          local: {type: openai, base_url: "http://127.0.0.1:8001/v1", keys: [sk-local-canary-1]}
        routing: {aliases: {fast: local/qwen3-8b}}
        clients: [{name: app1, key: rg-client-canary-1234, rpm: 60}]
        """,
    )
    secrets = {
        "OPENAI_API_KEY": "sk-openai-canary-aaaa",
        "GROQ_API_KEYS": "gsk-canary-b1,gsk-canary-b2",
        "PROXY_API_KEY": "rg-proxy-canary-5678",
    }
    done = run_cli(tmp_path, "config", "check", **secrets)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    for provider, key in (
        ("openai", "sk-openai-canary-aaaa"),
        ("groq", "gsk-canary-b1"),
        ("groq", "gsk-canary-b2"),
        ("local", "sk-local-canary-1"),
    ):
        assert kid(provider, key) in done.stdout
    assert "canary" not in out
    for word in ("local", "fast", "app1", "proxy-api-key", "round_robin", "least_used"):
        if word != "round_robin":
            assert word in done.stdout, word


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("providers: {groq: {keys: [a], key_strategy: fastest}}\n", "key_strategy"),
        ("providers: {groq: {keys: ['${UNSET_VAR_X}']}}\n", "UNSET_VAR_X"),
        ("providers: {x: {type: nonsense}}\n", "providers.x.type"),
        ("providers: [\n", "YAML"),
    ],
)
@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["config", "check"]])
def test_bad_config_stops_the_cli_with_one_line(tmp_path, yaml_text, field, command):
    path = write(tmp_path / "relaygate.yaml", yaml_text)
    done = run_cli(tmp_path, *command)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert field in lines[0] and str(path.name) in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("env", "files", "named"),
    [
        ({"PROXY_API_KEY": "Q7shrt"}, {}, "PROXY_API_KEY"),
        ({"CLIENT_API_KEYS_MAP": "long-enough-key:A,Q7shrt:B"}, {}, "CLIENT_API_KEYS_MAP"),
        ({}, {"keys/forwarder_api_keys.txt": "fwd_long_enough\nQ7shrt\n"}, "api_keys.txt: line 2"),
    ],
    ids=["proxy", "map", "keys-file"],
)
def test_a_too_short_client_key_names_its_variable_or_file(tmp_path, env, files, named):
    for name, text in files.items():
        write(tmp_path / name, text)
    message = _one_line_error(None, env, tmp_path)
    assert named in message and "8 characters" in message
    assert "Q7shrt" not in message  # the key itself is never shown

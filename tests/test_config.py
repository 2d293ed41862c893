"""Configuration: file plus AGENTPOST_* overrides, with the names operators and tests rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentpost import config


def test_documented_environment_names_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agentpost.toml"
    path.write_text('hostname = "from-file"\n[http]\nlisten = "127.0.0.1:1"\n')
    env = {
        "AGENTPOST_CONFIG": str(path),
        "AGENTPOST_HTTP_LISTEN": "127.0.0.1:8080",
        "AGENTPOST_MX_LISTEN": "127.0.0.3:25",
        "AGENTPOST_HOSTNAME": "mx.example.test",
        "AGENTPOST_DNS_SERVERS": "127.0.0.1:5353,127.0.0.2:53",
        "AGENTPOST_DATABASE_URL": "postgresql://u@127.0.0.1/db",
        "AGENTPOST_OUTBOUND_SOURCE": "127.0.0.2",
        "AGENTPOST_DATA_DIR": str(tmp_path),
    }
    loaded = config.load(env)
    assert loaded.http.listen == "127.0.0.1:8080"
    assert loaded.mx.listen == "127.0.0.3:25"
    assert loaded.hostname == "mx.example.test"
    assert loaded.dns.servers == ["127.0.0.1:5353", "127.0.0.2:53"]
    assert loaded.database.url == "postgresql://u@127.0.0.1/db"
    assert loaded.outbound.source == "127.0.0.2"


def test_defaults_are_the_development_ports(tmp_path: Path) -> None:
    loaded = config.load({"AGENTPOST_DATA_DIR": str(tmp_path)})
    assert (loaded.http.listen, loaded.mx.listen) == ("127.0.0.1:8080", "127.0.0.1:2525")
    assert loaded.database_url == f"sqlite:///{tmp_path / 'agentpost.db'}"


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"AGENTPOST_MX_MAX_MESSAGE_SIZE": "big"}, "mx.max_message_size"),
        ({"AGENTPOST_HTTP_NOPE": "1"}, "http.nope"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    with pytest.raises(config.ConfigError, match=fragment.replace(".", r"\.")):
        config.load({"AGENTPOST_DATA_DIR": str(tmp_path), **env})


def test_broken_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "agentpost.toml"
    path.write_text("hostname = [unterminated\n")
    with pytest.raises(config.ConfigError, match="agentpost.toml"):
        config.load({"AGENTPOST_CONFIG": str(path)})


@pytest.mark.parametrize(
    "value, expected",
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:25", ("::1", 25)), ("mx.example.test", ("mx.example.test", 25))],
)
def test_split_hostport(value: str, expected: tuple[str, int]) -> None:
    assert config.split_hostport(value, 25) == expected


def test_a_table_setting_comes_from_a_json_object_in_the_environment(tmp_path: Path) -> None:
    env = {
        "AGENTPOST_DATA_DIR": str(tmp_path),
        "AGENTPOST_OUTBOUND_SOURCE_BY_DOMAIN": '{"agents.example.test": "192.0.2.11"}',
    }
    assert config.load(env).outbound.source_by_domain == {"agents.example.test": "192.0.2.11"}

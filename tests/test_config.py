"""The TOML configuration and the secret-hashing helper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kumo.config import Config, ConfigError, load_config, main, parse_config, parse_listen
from kumo.http.access import (
    DEFAULT_TRUSTED_HOSTS,
    Granted,
    hash_password,
    hash_token,
    parse_network,
    verify_password,
)

BASE = Path("/etc/kumo")
ALICE = hash_password("wonderland")
TOKEN_HASH = hash_token("t0ken")


def test_defaults() -> None:
    config = parse_config("", base_dir=BASE)
    assert config == Config()
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.data_dir == Path("kumo-data")
    assert config.trusted_hosts == DEFAULT_TRUSTED_HOSTS
    assert config.body_limit == 2 * 1024 * 1024
    assert config.node_id is None
    assert config.users == {}
    assert config.tokens == {}


def test_full_config() -> None:
    config = parse_config(
        f"""
        listen = "[::1]:0"
        data_dir = "data"
        node_id = "0B9E2C4A-1111-4222-8333-444455556666"
        body_limit = 4096
        trusted_hosts = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]

        [users]
        alice = "{ALICE}"

        [tokens]
        deploy = "{TOKEN_HASH}"
        """,
        base_dir=BASE,
    )
    assert (config.host, config.port) == ("::1", 0)
    assert config.data_dir == BASE / "data"
    assert config.node_id == "0b9e2c4a-1111-4222-8333-444455556666"
    assert config.body_limit == 4096
    assert config.trusted_hosts == (
        parse_network("10.0.0.0/8"),
        parse_network("192.0.2.1"),
        parse_network("2001:db8::/32"),
    )
    assert config.users == {"alice": ALICE}
    policy = config.access_policy()
    assert policy.authorize("10.9.9.9", None) == Granted("10.9.9.9")
    assert policy.authorize("127.0.0.1", "Bearer t0ken") == Granted("deploy")


def test_absolute_data_dir_and_empty_trust(tmp_path: Path) -> None:
    config = parse_config(f'data_dir = "{tmp_path}"\ntrusted_hosts = []', base_dir=BASE)
    assert config.data_dir == tmp_path
    assert config.trusted_hosts == ()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("listen = ", "not TOML"),
        ("lissen = '127.0.0.1:1'", "unknown key 'lissen'"),
        ("listen = 8000", "listen must be a string"),
        ("listen = 'localhost'", "not HOST:PORT"),
        ("listen = '127.0.0.1:99999'", "over 65535"),
        ("listen = '::1:8000'", "in brackets"),
        ("body_limit = 0", "body_limit must be a positive number"),
        ("body_limit = '2MiB'", "body_limit must be a positive number"),
        ("trusted_hosts = '127.0.0.1'", "trusted_hosts must be a list"),
        ("trusted_hosts = ['localhost']", "trusted_hosts: "),
        ("node_id = 'node-1'", "node_id must be a UUID"),
        ("users = ['alice']", "[users] must be a table"),
        ("[users]\nalice = 'wonderland'", "user 'alice': "),
        ("[tokens]\nci = 't0ken'", "token 'ci': "),
        ("[tokens]\nci = 5", "tokens.ci must be a string"),
    ],
)
def test_bad_configs_name_the_key(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=BASE)
    assert why in str(caught.value)


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:25") == ("0.0.0.0", 25)
    assert parse_listen("[::]:8000") == ("::", 8000)
    assert parse_listen("example.com:80") == ("example.com", 80)
    for bad in ("", ":80", "host:", "host:-1", "host:８０"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "kumo.toml"
    path.write_text('data_dir = "d"\n', encoding="utf-8")
    assert load_config(path).data_dir == tmp_path / "d"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_hash_password_command_reads_a_pipe() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kumo.config", "hash-password", "alice"],
        input="wonderland\n",
        capture_output=True,
        text=True,
        check=True,
    )
    name, _, quoted = result.stdout.strip().partition(" = ")
    assert name == "alice"
    encoded = quoted.strip('"')
    assert verify_password("wonderland", encoded)
    parse_config(f"[users]\n{result.stdout}", base_dir=BASE)  # pastes as is


def test_hash_token_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-token", "ci"]) == 0
    token_line, hash_line = capsys.readouterr().out.splitlines()
    token = token_line.removeprefix("token: ")
    assert hash_line == f'ci = "{hash_token(token)}"'
    assert len(token) >= 32


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "hash-password" in capsys.readouterr().err

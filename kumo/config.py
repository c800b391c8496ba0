"""kumo's configuration: a TOML file read into a frozen value.

Every key is optional::

    listen = "127.0.0.1:8000"          # HOST:PORT; [::1]:8000 for IPv6; port 0 picks one
    data_dir = "kumo-data"             # relative to the config file's directory
    node_id = "0b9e...-uuid"           # the nodeid of log records; default: the engine's
    body_limit = 2097152               # request body limit in bytes (2 MiB)
    trusted_hosts = ["127.0.0.1", "::1", "10.0.0.0/8"]

    [users]                            # HTTP Basic: name = scrypt hash
    alice = "scrypt$16384$8$1$...$..."

    [tokens]                           # Bearer: name = token hash; the name is recorded
    deploy = "sha256$..."

Unknown keys are refused, so that a typo does not silently leave a default in place.
Secrets are never stored in clear: ``python -m kumo.config hash-password`` and
``python -m kumo.config hash-token`` print the values to paste.
"""

from __future__ import annotations

import getpass
import secrets
import sys
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from kumo.http.access import (
    DEFAULT_TRUSTED_HOSTS,
    AccessPolicy,
    IPNetwork,
    hash_password,
    hash_token,
    parse_network,
)
from kumo.http.errors import DEFAULT_BODY_LIMIT

DEFAULT_LISTEN: Final = "127.0.0.1:8000"
DEFAULT_DATA_DIR: Final = Path("kumo-data")


class ConfigError(ValueError):
    """A configuration that kumo cannot run with; the message names the key and why."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; ConfigError if not."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"listen address {text!r} is not HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"listen port {port} is over 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"listen address {text!r}: write an IPv6 host in brackets, [::1]:8000")
    return host, port


def _check_listen(_: object, __: object, value: str) -> None:
    parse_listen(value)


def _check_body_limit(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"body_limit must be a positive number of bytes, got {value!r}")


@attrs.frozen(slots=True, hash=False)
class Config:
    """Everything ``kumo serve`` needs besides the command line, with its defaults.

    docs/operations.md, "Configuration file", lists each key and its default.
    """

    listen: str = attrs.field(default=DEFAULT_LISTEN, validator=_check_listen)
    data_dir: Path = DEFAULT_DATA_DIR
    trusted_hosts: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_HOSTS
    users: Mapping[str, str] = attrs.field(factory=dict)
    """User name -> scrypt password hash."""
    tokens: Mapping[str, str] = attrs.field(factory=dict)
    """Token name -> SHA-256 token hash."""
    body_limit: int = attrs.field(default=DEFAULT_BODY_LIMIT, validator=_check_body_limit)
    node_id: str | None = None

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    def access_policy(self) -> AccessPolicy:
        """The access decisions this configuration asks for."""
        return AccessPolicy(self.trusted_hosts, self.users, self.tokens)


_KEYS: Final = (
    "listen",
    "data_dir",
    "node_id",
    "body_limit",
    "trusted_hosts",
    "users",
    "tokens",
)


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _secrets(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table of name = hash")
    return {name: _string(f"{key}.{name}", item) for name, item in value.items()}


def _networks(value: object) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise ConfigError("trusted_hosts must be a list of IP addresses or CIDRs")
    networks = []
    for item in value:
        try:
            networks.append(parse_network(_string("trusted_hosts", item)))
        except ValueError as exc:
            raise ConfigError(f"trusted_hosts: {exc}") from None
    return tuple(networks)


def _node_id(value: object) -> str:
    try:
        return str(uuid.UUID(_string("node_id", value)))
    except ValueError:
        raise ConfigError(f"node_id must be a UUID, got {value!r}") from None


def parse_config(text: str, *, base_dir: Path) -> Config:
    """The configuration in TOML ``text``; relative paths are relative to ``base_dir``.

    Raises :class:`ConfigError` naming the first key that is wrong.
    """
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not TOML: {exc}") from None
    for key in data:
        if key not in _KEYS:
            expected = ", ".join(_KEYS)
            raise ConfigError(f"unknown key {key!r} in config; expected one of {expected}")
    values: dict[str, Any] = {}
    if "listen" in data:
        values["listen"] = _string("listen", data["listen"])
    if "data_dir" in data:
        values["data_dir"] = base_dir / _string("data_dir", data["data_dir"])
    if "node_id" in data:
        values["node_id"] = _node_id(data["node_id"])
    if "body_limit" in data:
        values["body_limit"] = data["body_limit"]
    if "trusted_hosts" in data:
        values["trusted_hosts"] = _networks(data["trusted_hosts"])
    for key in ("users", "tokens"):
        if key in data:
            values[key] = _secrets(key, data[key])
    config = Config(**values)
    try:
        config.access_policy()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config


def load_config(path: Path) -> Config:
    """The configuration in the TOML file at ``path``; ConfigError if it is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, base_dir=path.parent)


_USAGE: Final = """\
usage: python -m kumo.config hash-password [NAME]   read a password, print a [users] line
       python -m kumo.config hash-token [NAME]      make a token, print it and a [tokens] line
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``hash-password``: read a password (twice, without echo; or one line from a pipe)
    and print ``NAME = "<hash>"``. ``hash-token``: draw a random token, print it once
    (give it to the client) and the line for ``[tokens]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("hash-password", "hash-token") or len(args) > 2:
        sys.stderr.write(_USAGE)
        return 2
    command, name = args[0], (args[1] if len(args) > 1 else "name")
    if command == "hash-token":
        token = secrets.token_urlsafe(32)
        print(f"token: {token}")
        print(f'{name} = "{hash_token(token)}"')
        return 0
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("the passwords differ\n")
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.stderr.write("an empty password is refused\n")
        return 1
    print(f'{name} = "{hash_password(password)}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The TOML configuration and the secret-hashing helper."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest

from kumo.config import (
    Config,
    ConfigError,
    DomainOverrides,
    EgressSettings,
    LineEndings,
    Nameserver,
    QueueSettings,
    TlsPolicy,
    load_config,
    main,
    parse_config,
    parse_config_data,
    parse_listen,
)
from kumo.http.access import (
    DEFAULT_TRUSTED_HOSTS,
    Granted,
    hash_password,
    hash_token,
    parse_network,
    verify_password,
)
from kumo.model.cidr_set import CidrSet
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.fleet import FleetSettings
from kumo.model.retry import RetryPolicy
from kumo.model.smtp_client import ClientSettings, ClientTimeouts, TlsMode
from kumo.model.throttle import ThrottleSpec

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
        ('admin_hold = "2s"', "admin_hold must be a duration from 0 to 1s"),
        ('admin_hold = "soon"', "admin_hold: 'soon' is not a duration"),
        ("admin_hold = -1", "admin_hold"),
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


# -- the mail path: [smtp_listener], [queue], [egress], [domains."..."], [dns] -----------

SECOND = NANOS_PER_SECOND
MINUTE = 60 * SECOND


def test_mail_path_defaults_are_kumomta_s() -> None:
    config = parse_config("", base_dir=BASE)
    listener = config.smtp_listener
    assert listener.listen == "127.0.0.1:2025"
    assert listener.hostname == (socket.gethostname() or "localhost")
    assert listener.relay_hosts == CidrSet.parse(["127.0.0.1", "::1"])
    assert listener.max_message_size == 20 * 1024 * 1024
    assert listener.max_recipients_per_message == 1024
    assert listener.max_messages_per_connection == 10_000
    assert listener.max_connections == 32_768
    assert listener.client_timeout == 60 * SECOND
    assert listener.data_processing_timeout == 5 * MINUTE
    assert listener.line_length_hard_limit == 998
    assert listener.invalid_line_endings is LineEndings.DENY
    assert listener.tls_certificate is None
    assert listener.tls_private_key is None

    assert config.queue == QueueSettings(
        retry_interval=20 * MINUTE, max_retry_interval=None, max_age=7 * 86_400 * SECOND
    )
    assert config.queue.mx_list == ()
    assert config.queue.retry_policy == RetryPolicy()

    egress = config.egress
    assert (egress.connection_limit, egress.max_deliveries_per_connection) == (32, 1024)
    assert egress.max_ready == 1024
    assert egress.enable_tls is TlsPolicy.OPPORTUNISTIC
    assert egress.smtp_port == 25
    assert egress.prohibited_hosts == CidrSet.parse(["127.0.0.0/8", "::1", "0.0.0.0", "::"])
    assert egress.ehlo_domain == listener.hostname
    timeouts = {
        name: getattr(egress, f"{name}_timeout") // SECOND
        for name in (
            "connect",
            "banner",
            "ehlo",
            "mail_from",
            "rcpt_to",
            "data",
            "data_dot",
            "rset",
            "idle",
            "starttls",
        )
    }
    # KumoMTA's code defaults (its docs say 60s for idle and data_dot).
    assert timeouts == {
        "connect": 60,
        "banner": 60,
        "ehlo": 300,
        "mail_from": 300,
        "rcpt_to": 300,
        "data": 300,
        "data_dot": 300,
        "rset": 5,
        "idle": 5,
        "starttls": 5,
    }
    # The client's own defaults are the same.
    assert egress.client_settings == ClientSettings(listener.hostname)
    assert config.domains == {}
    assert config.dns.nameservers == ()
    assert config.dns.servers == ()


def test_full_mail_path_config() -> None:
    config = parse_config(
        """
        [smtp_listener]
        listen = "0.0.0.0:25"
        hostname = "mx.example.net"
        relay_hosts = ["127.0.0.1", "::1", "10.0.0.0/8"]
        max_message_size = 1048576
        max_recipients_per_message = 10
        max_messages_per_connection = 100
        max_connections = 64
        client_timeout = "30s"
        data_processing_timeout = 90
        line_length_hard_limit = 2000
        invalid_line_endings = "Fix"
        tls_certificate = "cert.pem"
        tls_private_key = "/keys/key.pem"

        [queue]
        retry_interval = "5m"
        max_retry_interval = "8h"
        max_age = "3days"

        [egress]
        connection_limit = 4
        max_deliveries_per_connection = 100
        max_ready = 50
        enable_tls = "Disabled"
        smtp_port = 2525
        prohibited_hosts = []
        connect_timeout = "5s"
        idle_timeout = 1.5
        ehlo_domain = "out.example.net"

        [domains."example.com"]
        mx_list = ["127.0.0.1:2600"]
        retry_interval = "10s"
        connection_limit = 1

        [domains.slow]
        max_age = "1h"

        [dns]
        nameservers = ["127.0.0.1:5353", "::1", "[::1]:5300", "192.0.2.53"]
        """,
        base_dir=BASE,
    )
    listener = config.smtp_listener
    assert (listener.listen, listener.hostname) == ("0.0.0.0:25", "mx.example.net")
    assert ipaddress.ip_address("10.9.8.7") in listener.relay_hosts
    assert listener.client_timeout == 30 * SECOND
    assert listener.data_processing_timeout == 90 * SECOND
    assert listener.invalid_line_endings is LineEndings.FIX
    assert listener.tls_certificate == BASE / "cert.pem"
    assert listener.tls_private_key == Path("/keys/key.pem")
    assert config.queue == QueueSettings(
        retry_interval=5 * MINUTE, max_retry_interval=8 * 60 * MINUTE, max_age=3 * 86_400 * SECOND
    )
    assert config.egress.enable_tls is TlsPolicy.DISABLED
    assert config.egress.prohibited_hosts == CidrSet.parse([])
    assert config.egress.idle_timeout == 1_500_000_000
    assert config.egress.ehlo_domain == "out.example.net"
    assert config.dns.nameservers == (
        Nameserver("127.0.0.1", 5353),
        Nameserver("::1"),
        Nameserver("::1", 5300),
        Nameserver("192.0.2.53", 53),
    )

    assert config.dns.servers == (
        ("127.0.0.1", 5353),
        ("::1", 53),
        ("::1", 5300),
        ("192.0.2.53", 53),
    )
    client = config.egress.client_settings
    assert client.ehlo_domain == "out.example.net"
    assert client.enable_tls is TlsMode.DISABLED
    assert client.max_deliveries_per_connection == 100
    assert client.timeouts == attrs.evolve(ClientTimeouts(), connect=5 * SECOND, idle=1_500_000_000)

    domain = config.queue_settings("Example.COM")
    assert domain == attrs.evolve(
        config.queue, retry_interval=10 * SECOND, mx_list=("127.0.0.1:2600",)
    )
    assert config.egress_settings("example.com") == attrs.evolve(config.egress, connection_limit=1)
    assert config.queue_settings("slow").max_age == 3600 * SECOND
    assert config.egress_settings("slow") is config.egress
    assert config.queue_settings("elsewhere.example") is config.queue


def test_domain_overrides_follow_the_defaults_they_leave() -> None:
    config = parse_config('[domains."example.com"]\nretry_interval = "1m"', base_dir=BASE)
    changed = attrs.evolve(config, queue=attrs.evolve(config.queue, max_age=3600 * SECOND))
    assert changed.queue_settings("example.com") == QueueSettings(
        retry_interval=MINUTE, max_age=3600 * SECOND
    )


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ('"20m"', 20 * MINUTE),
        ('"1h 30m"', 90 * MINUTE),
        ('"7days"', 7 * 86_400 * SECOND),
        ("45", 45 * SECOND),
        ("2.5", 2_500_000_000),
        ("0.1", 100_000_000),
        ("1e-9", 1),
        ("1.4e-9", 1),  # to the nearest nanosecond, as Rust's Duration::from_secs_f64
        ("1.6e-9", 2),
    ],
)
def test_durations_are_strings_or_seconds(value: str, nanos: int) -> None:
    config = parse_config(f"[smtp_listener]\nclient_timeout = {value}", base_dir=BASE)
    assert config.smtp_listener.client_timeout == nanos


def test_listener_off() -> None:
    config = parse_config('[smtp_listener]\nlisten = "off"', base_dir=BASE)
    assert config.smtp_listener.listen is None


L = "[smtp_listener]\n"
Q = "[queue]\n"
E = "[egress]\n"
D = '[domains."example.com"]\n'


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("smtp_listener = 1", "[smtp_listener] must be a table"),
        (L + "port = 25", "unknown key 'port' in [smtp_listener]; expected one of listen, "),
        (L + "listen = 'localhost'", "smtp_listener.listen: listen address 'localhost' is not"),
        (L + "hostname = ''", "smtp_listener.hostname must be a non-empty string"),
        (L + "relay_hosts = '127.0.0.1'", "smtp_listener.relay_hosts must be a list"),
        (
            L + "relay_hosts = ['10.0.0.1/8']",
            "smtp_listener.relay_hosts: '10.0.0.1/8' is not a valid CIDR: "
            "host bits are set; did you mean 10.0.0.0/8?",
        ),
        (L + "max_message_size = 0", "smtp_listener.max_message_size must be a positive integer"),
        (L + "max_connections = true", "smtp_listener.max_connections must be an integer, got Tr"),
        (L + "client_timeout = '0s'", "smtp_listener.client_timeout must be a positive duration"),
        (L + "client_timeout = '60'", "smtp_listener.client_timeout: '60' is not a duration: "),
        (L + "client_timeout = -1", "smtp_listener.client_timeout must be a duration string"),
        (L + "client_timeout = nan", "smtp_listener.client_timeout must be a duration string"),
        (
            L + "invalid_line_endings = 'deny'",
            "smtp_listener.invalid_line_endings must be one of Deny, Allow, Fix",
        ),
        (L + "tls_certificate = 'c.pem'", "tls_certificate and smtp_listener.tls_private_key go"),
        (
            Q + "retry = '5m'",
            "unknown key 'retry' in [queue]; "
            "expected one of retry_interval, max_retry_interval, max_age",
        ),
        (Q + "mx_list = ['a']", "unknown key 'mx_list' in [queue]"),
        (Q + "retry_interval = '500ms'", "queue.retry_interval must be a duration of at least 1s"),
        (Q + "max_retry_interval = 0", "queue.max_retry_interval must be a duration of at least"),
        (Q + "max_age = '1 fortnight'", "queue.max_age: '1 fortnight' is not a duration: unknown"),
        (Q + "max_age = 1e30", "queue.max_age must be a positive duration"),
        (E + "connection_limit = 0", "egress.connection_limit must be a positive integer"),
        (E + "smtp_port = 70000", "egress.smtp_port must be a port number from 1 to 65535"),
        (
            E + "enable_tls = true",
            "egress.enable_tls must be one of Opportunistic, OpportunisticInsecure, Required, "
            "RequiredInsecure, Disabled",
        ),
        (E + "prohibited_hosts = ['localhost']", "egress.prohibited_hosts: 'localhost' is not a"),
        (E + "data_dot_timout = 5", "unknown key 'data_dot_timout' in [egress]"),
        (E + "ehlo_domain = 5", "egress.ehlo_domain must be a string"),
        ("domains = 1", "[domains] must be a table"),
        ("[domains]\n'example.com' = 1", '[domains."example.com"] must be a table'),
        (
            D + "mx_lists = []",
            "unknown key 'mx_lists' in [domains.\"example.com\"]; expected one of retry_interval, ",
        ),
        (D + 'mx_list = "a"', 'domains."example.com".mx_list must be a list of strings'),
        (D + 'mx_list = [""]', 'domains."example.com".mx_list must be a non-empty string'),
        ("[domains.example]\nmax_ready = 0", "domains.example.max_ready must be a positive"),
        ('[domains.""]\nmax_ready = 1', "[domains] has an empty domain name"),
        ('[domains."Example.com"]\n[domains."example.COM"]', "names 'example.com' twice"),
        ("[dns]\nservers = []", "unknown key 'servers' in [dns]; expected one of nameservers"),
        ("[dns]\nnameservers = '127.0.0.1'", "dns.nameservers must be a list"),
        (
            "[dns]\nnameservers = ['localhost:53']",
            "dns.nameservers: 'localhost:53' is not IP, IP:PORT or [IPv6]:PORT",
        ),
        ("[dns]\nnameservers = ['127.0.0.1:0']", "dns.nameservers: '127.0.0.1:0' is not IP"),
    ],
)
def test_bad_mail_path_configs_name_the_key(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=BASE)
    assert why in str(caught.value)
    assert "\n" not in str(caught.value)


def test_records_check_their_fields() -> None:
    with pytest.raises(ConfigError, match="max_ready must be a positive integer"):
        EgressSettings(max_ready=0)
    with pytest.raises(ConfigError, match="retry_interval must be a duration of at least 1s"):
        QueueSettings(retry_interval=0)
    with pytest.raises(ConfigError, match="must be written in lower case"):
        Config(domains={"Example.com": DomainOverrides()})
    with pytest.raises(ConfigError, match=r"domains\.x: .*max_age must be a positive duration"):
        Config(domains={"x": DomainOverrides(queue={"max_age": -1})})
    with pytest.raises(ConfigError, match="a nameserver must be an IP address"):
        Nameserver("localhost")


def test_the_log_table_sets_how_often_the_engine_compacts() -> None:
    assert parse_config("", base_dir=BASE).log.engine_settings().snapshot_every == 100_000
    config = parse_config("[log]\nsnapshot_every = 0", base_dir=BASE)
    assert config.log.engine_settings().snapshot_every == 0
    with pytest.raises(ConfigError, match=r"snapshot_every must be a whole number, 0 or more"):
        parse_config("[log]\nsnapshot_every = -1", base_dir=BASE)
    with pytest.raises(ConfigError, match=r"unknown key 'archive_retension' in \[log\]"):
        parse_config('[log]\narchive_retension = "90days"', base_dir=BASE)


def test_the_log_table_sets_how_long_the_history_is_kept() -> None:
    assert parse_config("", base_dir=BASE).log.engine_settings().archive_retention is None
    for text, days in (('"90days"', 90), ('"1d 12h"', 1.5), ("86400", 1), ("43200.0", 0.5)):
        config = parse_config(f"[log]\narchive_retention = {text}", base_dir=BASE)
        assert config.log.engine_settings().archive_retention == round(days * 86_400 * 10**9)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ('"forever"', "log.archive_retention: 'forever' is not a duration"),
        ('""', "log.archive_retention: '' is not a duration"),
        ("0", "log.archive_retention must be a positive duration, got 0"),
        ('"0s"', "log.archive_retention must be a positive duration, got 0"),
        ("-1", "log.archive_retention must be a duration string"),
        ("true", "log.archive_retention must be a duration string"),
        ("[1]", "log.archive_retention must be a duration string"),
        ('"18446744073709551616s"', "log.archive_retention: '18446744073709551616s' is not a"),
    ],
)
def test_a_bad_archive_retention_is_refused_in_one_line(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[log]\narchive_retention = {value}", base_dir=BASE)
    assert why in str(caught.value)
    assert "\n" not in str(caught.value)


def test_fleet_mode_is_off_by_default_and_on_with_a_redis_url() -> None:
    assert parse_config("", base_dir=BASE).fleet is None
    config = parse_config('[fleet]\nredis = "redis://10.0.0.7:6380/2"\n', base_dir=BASE)
    assert config.fleet == FleetSettings("redis://10.0.0.7:6380/2", "kumo:admin")
    named = parse_config(
        '[fleet]\nredis = "redis://127.0.0.1"\nstream = "mta:admin"\n', base_dir=BASE
    )
    assert named.fleet is not None
    assert named.fleet.stream == "mta:admin"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("fleet = 1", "[fleet] must be a table"),
        ("[fleet]\nstream = 'x'", "[fleet] needs redis"),
        ("[fleet]\nredis = 'redis://h'\nstreams = 'x'", "unknown key 'streams' in [fleet]"),
        ("[fleet]\nredis = 6379", "fleet.redis must be a string"),
        ("[fleet]\nredis = 'http://h:6379'", "fleet.redis: 'http://h:6379' is not a redis://"),
        ("[fleet]\nredis = 'redis://:6379'", "names no host"),
        ("[fleet]\nredis = 'redis://h:99999'", "port that is not a number"),
        ("[fleet]\nredis = 'redis://h/zero'", "the database after the / must be a number"),
        ("[fleet]\nredis = 'redis://h'\nstream = ''", "fleet.stream: stream must be"),
    ],
)
def test_bad_fleet_tables_name_the_key(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, base_dir=BASE)
    assert why in str(raised.value)


def test_a_document_already_read_is_checked_alike(tmp_path: Path) -> None:
    """parse_config_data: what a scenario's [config] table goes through."""
    text = '[queue]\nretry_interval = "30s"\n[domains."Example.com"]\nmax_ready = 10\n'
    data = tomllib.loads(text)
    assert parse_config_data(data, base_dir=tmp_path) == parse_config(text, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'colour' in config"):
        parse_config_data({"colour": "red"}, base_dir=tmp_path)


def test_fleet_limits_are_off_by_default_and_on_with_a_fleet() -> None:
    assert parse_config("", base_dir=BASE).egress.fleet_limits is False
    fleet = '[fleet]\nredis = "redis://127.0.0.1"\n'
    config = parse_config(fleet + "[egress]\nfleet_limits = true\n", base_dir=BASE)
    assert config.egress.fleet_limits is True
    one = parse_config(fleet + '[domains."example.com"]\nfleet_limits = true\n', base_dir=BASE)
    assert one.egress.fleet_limits is False
    assert one.egress_settings("Example.COM").fleet_limits is True
    # A domain may also turn it off for itself.
    off = parse_config(
        fleet + "[egress]\nfleet_limits = true\n[domains.local]\nfleet_limits = false\n",
        base_dir=BASE,
    )
    assert off.egress_settings("local").fleet_limits is False
    assert off.egress_settings("other").fleet_limits is True
    # Off without [fleet] is no error.
    assert parse_config("[egress]\nfleet_limits = false\n", base_dir=BASE).fleet is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[egress]\nfleet_limits = true", "egress.fleet_limits = true needs [fleet]"),
        (
            '[domains."example.com"]\nfleet_limits = true',
            'domains."example.com".fleet_limits = true needs [fleet]',
        ),
        ("[egress]\nfleet_limits = 1", "egress.fleet_limits must be true or false, got 1"),
        ("[egress]\nfleet_limits = 'yes'", "egress.fleet_limits must be true or false"),
    ],
)
def test_bad_fleet_limits_name_the_key(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=BASE)
    assert why in str(caught.value)
    assert "\n" not in str(caught.value)


def test_max_message_rate_is_none_by_default_and_set_per_domain() -> None:
    assert parse_config("", base_dir=BASE).egress.max_message_rate is None
    config = parse_config(
        '[egress]\nmax_message_rate = "100/s"\n'
        '[domains."example.com"]\nmax_message_rate = "local:1,000/h,max_burst=50"\n'
        "[domains.slow]\nmax_deliveries_per_connection = 5\n",
        base_dir=BASE,
    )
    assert config.egress.max_message_rate == ThrottleSpec(100, 1)
    assert config.egress_settings("other").max_message_rate == ThrottleSpec(100, 1)
    assert config.egress_settings("slow").max_message_rate == ThrottleSpec(100, 1)
    assert config.egress_settings("Example.com").max_message_rate == ThrottleSpec(
        1000, 3600, 50, local=True
    )
    assert str(config.egress_settings("example.com").max_message_rate) == (
        "local:1000/h,max_burst=50"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            '[egress]\nmax_message_rate = "0/s"',
            "egress.max_message_rate: '0/s' is not a message rate: limit must be greater than 0",
        ),
        (
            '[egress]\nmax_message_rate = "10/week"',
            "egress.max_message_rate: '10/week' is not a message rate: the period must be",
        ),
        ("[egress]\nmax_message_rate = 10", "egress.max_message_rate must be a string"),
        (
            '[domains."example.com"]\nmax_message_rate = "10/s,burst=2"',
            "domains.\"example.com\".max_message_rate: '10/s,burst=2' is not a message rate: "
            "the only option after the period is max_burst=N",
        ),
        ('[queue]\nmax_message_rate = "10/s"', "unknown key 'max_message_rate' in [queue]"),
    ],
)
def test_a_bad_max_message_rate_names_the_key_and_the_problem(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=BASE)
    assert why in str(caught.value)


def test_admin_hold_reaches_the_engine_settings() -> None:
    assert parse_config("", base_dir=BASE).engine_settings().admin_hold == 0.1
    config = parse_config('admin_hold = "250ms"\n[log]\nsnapshot_every = 7', base_dir=BASE)
    settings = config.engine_settings()
    assert (settings.admin_hold, settings.snapshot_every) == (0.25, 7)
    assert parse_config("admin_hold = 0", base_dir=BASE).engine_settings().admin_hold == 0.0

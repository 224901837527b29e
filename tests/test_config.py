import dataclasses
import tomllib
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import Config, ConfigError, load, merge, redacted

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = ROOT / "config" / "gateway.toml"


def test_builtin_defaults_equal_the_documented_file() -> None:
    assert load(str(DOCUMENTED)) == Config()


def test_documented_file_lists_every_key() -> None:
    with open(DOCUMENTED, "rb") as f:
        documented = tomllib.load(f)
    for section in dataclasses.fields(Config):
        if section.name == "commands":  # declarations: a commented example (tested apart)
            continue
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(documented[section.name]) == keys, section.name


def test_design_defaults() -> None:
    c = Config()
    assert c.tcp.listen == "tcp:9999:interface=127.0.0.1"
    assert c.http.listen == "tcp:8080:interface=127.0.0.1"
    assert c.tcp.max_line_length == 4096
    assert c.tcp.idle_timeout == 300
    assert (c.quota.max_clients, c.quota.max_per_ip) == (10, 0)
    assert (c.lastlog.source, c.lastlog.max_lines) == ("auto", 1000)
    assert c.comphash.allowed_roots == ("/",)
    # The design's five, and BLAKE3 (its hashing roadmap: -a blake3)
    assert c.comphash.algorithms == ("sha1", "sha256", "sha512", "md5", "blake2b", "blake3")
    assert c.websocket.allowed_origins == ()


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[quota]\nmax_clients = 3\nmax_per_ip = 1\n[tcp]\nlisten = "tcp:1"\n')
    env = {"GATEWAY_QUOTA_MAX_CLIENTS": "4", "GATEWAY_COMPHASH_ALLOWED_ROOTS": "/srv, /tmp"}
    c = load(str(path), env, {"quota.max_clients": None, "tcp.listen": "tcp:2"})
    assert c.quota.max_clients == 4  # env over file
    assert c.quota.max_per_ip == 1  # file over default
    assert c.tcp.listen == "tcp:2"  # flag over file
    assert c.comphash.allowed_roots == ("/srv", "/tmp")
    c = load(str(path), env, {"quota.max_clients": "5"})
    assert c.quota.max_clients == 5  # flag over env


def test_env_lists_may_be_toml() -> None:
    env = {
        "GATEWAY_COMPHASH_ALGORITHMS": '["sha256", "md5"]',
        "GATEWAY_COMPHASH_DEFAULT_ALGORITHM": "sha256",
    }
    c = load(None, env)
    assert c.comphash.algorithms == ("sha256", "md5")
    assert c.comphash.default_algorithm == "sha256"


def test_default_algorithm_must_stay_allowed() -> None:
    with pytest.raises(ConfigError, match="comphash.default_algorithm"):
        load(None, {"GATEWAY_COMPHASH_ALGORITHMS": "sha256"})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[quota]\nmax_clients = 0\n", "quota.max_clients"),
        ('[quota]\nmax_clients = "ten"\n', "quota.max_clients"),
        ("[quota]\nmax_client = 3\n", "quota.max_client"),
        ("[quotas]\nmax_clients = 3\n", "quotas"),
        ("[tcp]\nmax_line_length = -1\n", "tcp.max_line_length"),
        ("[tcp]\nidle_timeout = true\n", "tcp.idle_timeout"),
        ('[lastlog]\nsource = "relative.log"\n', "lastlog.source"),
        ('[lastlog]\nsource = "command:"\n', "lastlog.source"),
        ('[lastlog]\nsource = "journal:var/log/remote"\n', "lastlog.source"),
        ('[lastlog]\nsource = "journal:"\n', "lastlog.source"),
        ("[lastlog]\nmax_lines = 5\n", "lastlog.default_lines"),
        ('[comphash]\nalgorithms = ["rot13"]\n', "comphash.algorithms"),
        ('[comphash]\nallowed_roots = ["srv"]\n', "comphash.allowed_roots"),
        ("[comphash]\nallowed_roots = []\n", "comphash.allowed_roots"),
        ("[comphash]\nchunk_size = 4096\n", "comphash.chunk_size"),
        ('[log]\nformat = "xml"\n', "log.format"),
        ('[tls]\nclient_ca = "ca.pem"\n', "tls.client_ca"),
        ("[tls]\nrequire_client_cert = true\n", "tls.require_client_cert"),
        ('[audit]\nfile = "audit.jsonl"\n', "audit.file"),
        ('tcp = "x"\n', "tcp"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.key == key
    assert str(info.value).startswith(f"config error: {key}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("source", ["journal", "journal:/var/log/remote"])
def test_the_journal_is_a_source(tmp_path: Path, source: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[lastlog]\nsource = "{source}"\n')
    assert load(str(path)).lastlog.source == source


def test_unknown_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_QUOTA_MAX_CLIENT: unknown"):
        load(None, {"GATEWAY_QUOTA_MAX_CLIENT": "3"})


def test_unparsable_environment_value() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_QUOTA_MAX_CLIENTS: cannot parse"):
        load(None, {"GATEWAY_QUOTA_MAX_CLIENTS": "many"})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read .*nope.toml: No such file"):
        load(str(tmp_path / "nope.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[tcp\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load(str(broken))


def test_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[quota]\nmax_clients = -3\n")
    assert cli.main(["--config", str(path)], environ={}) == 2
    err = capsys.readouterr().err
    assert err == "gateway: config error: quota.max_clients: must be greater than 0, got -3\n"


def test_cli_bad_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--max-clients", "lots"], environ={}) == 2
    assert "quota.max_clients" in capsys.readouterr().err


def test_cli_bad_endpoint_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from twisted.internet.testing import MemoryReactorClock

    code = cli.run(load(None, {}, {"tcp.listen": "carrier-pigeon:7"}), MemoryReactorClock())
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("gateway: config error: tcp.listen: bad endpoint")


def test_cli_check_config_prints_effective_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--check-config", "--max-clients", "7"], environ={}) == 0
    assert '"max_clients": 7' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("endpoint", "beyond"),
    [
        ("tcp:9999", True),
        ("tcp:9999:interface=0.0.0.0", True),
        ("tcp:9999:interface=127.0.0.1", False),
        ("tcp:9999:interface=127.3.2.1", False),
        ("tcp:9999:interface=localhost", False),
        ("tcp6:9999:interface=\\:\\:1", False),
        ("tcp6:9999:interface=\\:\\:", True),
        ("tcp:9999:interface=192.168.1.10", True),
        ("ssl:9443:privateKey=k.pem:certKey=c.pem", True),
        ("ssl:9443:privateKey=k.pem:interface=127.0.0.1", False),
        ("unix:/run/gateway.sock", False),
        ("systemd:domain=INET:index=0", True),
    ],
)
def test_reaches_beyond_loopback(endpoint: str, beyond: bool) -> None:
    from gateway.config import reaches_beyond_loopback

    assert reaches_beyond_loopback(endpoint) is beyond


def test_unsafe_start_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--check-config", "--tcp", "tcp:9999"], environ={}) == 2
    err = capsys.readouterr().err
    assert err == (
        "gateway: refusing to listen beyond loopback without auth tokens "
        "(tcp.listen = tcp:9999): set [auth] tokens or GATEWAY_TOKEN, listen on 127.0.0.1, "
        "or pass --allow-remote-without-auth\n"
    )
    env = {"GATEWAY_TOKEN": "a-token-of-enough-length"}
    assert cli.main(["--check-config", "--tcp", "tcp:9999"], environ=env) == 0
    flags = ["--check-config", "--tcp", "tcp:9999", "--allow-remote-without-auth"]
    assert cli.main(flags, environ={}) == 0


def test_the_documented_config_and_unit_ship_with_the_package(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import main

    assert main(["--print-config-example"], {}) == 0
    assert capsys.readouterr().out == DOCUMENTED.read_text()
    assert main(["--print-systemd-unit"], {}) == 0
    assert capsys.readouterr().out == (ROOT / "config" / "gateway.service").read_text()
    assert main(["--print-systemd-socket"], {}) == 0
    assert capsys.readouterr().out == (ROOT / "config" / "gateway.socket").read_text()


def test_cluster_defaults_need_nothing_and_keep_everything_in_memory() -> None:
    config = load()
    assert config.cluster.redis == ""
    assert config.cluster.workers == 1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"redis": "http://u:hunter2secret@h/0"}, "not a redis://, rediss:// or unix:// URL"),
        ({"redis": "redis://:hunter2secret@h/x"}, "the database must be a number"),
        ({"redis": "unix://relative"}, "unix:// needs an absolute socket path"),
        ({"name": "a{b}"}, "letters, digits"),
        ({"on_redis_down": "maybe"}, 'must be "refuse" or "local"'),
        ({"lease_ttl": 1.0, "timeout": 0.5}, "three times cluster.timeout"),
        ({"workers": 2}, "more than one worker needs [cluster] redis"),
        ({"password_file": "redis.pass"}, "must be an absolute path"),
    ],
)
def test_bad_cluster_settings_are_named_and_never_show_a_password(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        merge(load(), {"cluster": section})
    assert message in str(info.value)
    assert "hunter2secret" not in str(info.value)


def test_check_config_shows_the_redis_url_without_its_password() -> None:
    config = merge(load(), {"cluster": {"redis": "redis://app:hunter2secret@db.example:6380/2"}})
    shown = redacted(config)["cluster"]["redis"]
    assert shown == "redis://db.example:6380/2"


def test_the_redis_password_comes_from_the_environment_without_being_a_config_key() -> None:
    config = load(environ={"GATEWAY_REDIS_PASSWORD": "hunter2secret"})
    assert "hunter2secret" not in str(redacted(config))


def test_more_than_one_worker_without_redis_is_refused_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["--workers", "2"], environ={}) == 2
    err = capsys.readouterr().err
    assert "cluster.workers: more than one worker needs [cluster] redis" in err


def test_workers_flag_and_argv_a_worker_gets() -> None:
    from gateway.supervisor import without_workers

    assert without_workers(["-c", "f.toml", "--workers", "3", "--tcp", "tcp:0"]) == [
        "-c",
        "f.toml",
        "--tcp",
        "tcp:0",
    ]
    assert without_workers(["--workers=3", "--http", "tcp:0"]) == ["--http", "tcp:0"]
    assert cli.inherited_listeners("tcp.listen=3,http.listen=4") == {
        "tcp.listen": 3,
        "http.listen": 4,
    }

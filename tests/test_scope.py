"""Named tokens and their scopes: parsed from the config, proven by the
authenticator, enforced by the command service for every transport."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from gateway.cli import main
from gateway.commands.follow import Followers, epoch_of
from gateway.commands.lastlog import prime_file
from gateway.commands.registry import Runners, build_service
from gateway.config import Config, ConfigError, load, merge, redacted
from gateway.core.auth import Authenticator
from gateway.core.command import Client, Request
from gateway.core.errors import CommandError
from gateway.core.events import Error, Event
from gateway.core.quota import ClientQuota
from gateway.core.scope import Identity, Scope
from gateway.core.service import CommandService
from gateway.frontends.admission import Admission, grants_of
from gateway.sessions.line import LineConversation

from .support.fakes import FakeSpawner, call_now, run_now

DASHBOARD = "dashboard-token-0123456789abcdef"
RELEASE = "release-token-0123456789abcdef00"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def config_with(tmp_path: Path, extra: str = "") -> Config:
    log = tmp_path / "syslog"
    log.write_text("".join(f"line {i}\n" for i in range(300)))
    (tmp_path / "releases").mkdir(exist_ok=True)
    (tmp_path / "releases" / "app.tar").write_bytes(b"release")
    (tmp_path / "secret").write_bytes(b"secret")
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[lastlog]\nsource = "{log}"\n'
        f"[[auth.token]]\n"
        f'name = "dashboard"\nsha256 = "{sha(DASHBOARD)}"\n'
        f'commands = ["lastlog", "stats", "help"]\nmax_lines = 200\nfollow = false\n'
        f"[[auth.token]]\n"
        f'name = "release-check"\nsha256 = "{sha(RELEASE)}"\n'
        f'commands = ["comphash"]\nroots = ["{tmp_path}/releases"]\nalgorithms = ["sha256"]\n'
        f"{extra}"
    )
    return load(str(path))


def service_for(config: Config, clock: Clock) -> tuple[CommandService, Authenticator]:
    followers = Followers(clock, run_now, 100, prime_file)
    runners = Runners(run_now, run_now, call_now, FakeSpawner().reactor, followers)
    service = build_service(config, clock, ClientQuota(10), runners)
    auth = Authenticator(grants_of(config), clock)
    service.identities = auth.current
    return service, auth


def run(service: CommandService, identity: Identity, line: str) -> list[Event]:
    events: list[Event] = []
    request = Request.from_line(line)
    assert request is not None
    service.execute(request, Client("tcp", "h", identity=identity), events.append)
    return events


def error_of(events: list[Event]) -> tuple[str, str] | None:
    errors = [e for e in events if isinstance(e, Error)]
    return (errors[0].code, errors[0].message) if errors else None


def test_each_scope_field_is_enforced_with_a_message_naming_the_token(tmp_path: Path) -> None:
    clock = Clock()
    service, auth = service_for(config_with(tmp_path), clock)
    dash = auth.check("h", DASHBOARD)
    release = auth.check("h", RELEASE)
    assert dash.name == "dashboard" and release.name == "release-check"
    assert error_of(run(service, dash, "lastlog 200")) is None
    assert error_of(run(service, dash, "lastlog 201")) == (
        "forbidden",
        'token "dashboard" may ask for at most 200 lines',
    )
    assert error_of(run(service, dash, "lastlog -f")) == (
        "forbidden",
        'token "dashboard" may not follow (its follow = false)',
    )
    assert error_of(run(service, dash, f"comphash {tmp_path}/secret")) == (
        "forbidden",
        'token "dashboard" may not run comphash (its commands: help, lastlog, stats)',
    )
    assert error_of(run(service, release, "lastlog")) == (
        "forbidden",
        'token "release-check" may not run lastlog (its commands: comphash)',
    )
    assert error_of(run(service, release, f"comphash -a sha1 {tmp_path}/releases/app.tar")) == (
        "forbidden",
        'token "release-check" may not use sha1 (its algorithms: sha256)',
    )
    assert error_of(run(service, release, f"comphash -a sha256 {tmp_path}/secret")) == (
        "forbidden",
        f'token "release-check" may not use paths outside {tmp_path}/releases: {tmp_path}/secret',
    )
    # A symlink out of the roots is judged where it leads.
    os.symlink(tmp_path / "secret", tmp_path / "releases" / "link")
    linked = error_of(run(service, release, f"comphash -a sha256 {tmp_path}/releases/link"))
    assert linked is not None and linked[0] == "forbidden"
    assert (
        error_of(run(service, release, f"comphash -a sha256 {tmp_path}/releases/app.tar")) is None
    )
    assert error_of(run(service, release, "exit")) is None  # always allowed


def test_an_expired_token_is_unauthorized_and_logged(tmp_path: Path) -> None:
    soon = dt.datetime.fromtimestamp(1000, dt.UTC).isoformat().replace("+00:00", "Z")
    config = config_with(
        tmp_path,
        f'[[auth.token]]\nname = "temp"\nsha256 = "{sha(DASHBOARD[::-1])}"\nexpires = {soon}\n',
    )
    clock = Clock()
    clock.advance(999)
    service, auth = service_for(config, clock)
    temp = auth.check("h", DASHBOARD[::-1])
    assert error_of(run(service, temp, "stats")) is None
    clock.advance(1)  # expires while connected: its next command is refused
    assert error_of(run(service, temp, "stats")) == (
        "unauthorized",
        'token "temp" has expired',
    )
    logged: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        with pytest.raises(CommandError) as info:
            auth.check("h2", DASHBOARD[::-1])
    finally:
        globalLogPublisher.removeObserver(observe)
    assert info.value.code == "unauthorized" and "expired" not in info.value.message
    assert "h2: token temp has expired" in logged


def test_a_reload_applies_new_scopes_to_the_next_command_and_drops_removed_tokens(
    tmp_path: Path,
) -> None:
    clock = Clock()
    config = config_with(tmp_path)
    service, auth = service_for(config, clock)
    out: list[str] = []
    conversation = LineConversation(
        service, Client("tcp", "h"), out.extend, lambda: None, auth=auth
    )
    conversation.start()
    conversation.submit(f"auth {DASHBOARD}")
    conversation.submit("lastlog 150")
    assert out[0] == "Authenticated." and out[-1] == "End lastlog"
    narrower = merge(
        config,
        {
            "auth": {
                "token": [
                    {"name": "dashboard", "sha256": sha(DASHBOARD), "max_lines": 100},
                ]
            }
        },
    )
    auth.replace_tokens(grants_of(narrower))
    conversation.submit("lastlog 150")
    assert out[-1] == 'An error occurred: token "dashboard" may ask for at most 100 lines'
    auth.replace_tokens(grants_of(merge(config, {"auth": {"token": []}})))
    conversation.submit("stats")
    assert out[-1] == 'token "dashboard" is no longer accepted'


SCOPES = st.builds(
    Scope,
    commands=st.none() | st.frozensets(st.sampled_from(["lastlog", "comphash", "stats", "help"])),
    max_lines=st.none() | st.integers(1, 50),
    follow=st.booleans(),
    algorithms=st.none() | st.frozensets(st.sampled_from(["sha1", "sha256", "md5"])),
)
ASKS = st.tuples(
    st.sampled_from(["lastlog", "comphash", "stats", "help"]),
    st.integers(1, 60),
    st.booleans(),
    st.sampled_from(["sha1", "sha256", "md5"]),
)


@settings(max_examples=300, deadline=None)
@given(scope=SCOPES, ask=ASKS)
def test_a_command_is_allowed_exactly_when_the_scope_says_so(
    tmp_path_factory: pytest.TempPathFactory, scope: Scope, ask: tuple[str, int, bool, str]
) -> None:
    tmp_path = tmp_path_factory.mktemp("scope")
    clock = Clock()
    service, _ = service_for(config_with(tmp_path), clock)
    service.identities = lambda identity: identity  # the scope under test, as it is
    command, lines, follow, algorithm = ask
    line = {
        "lastlog": f"lastlog {'-f ' if follow else ''}{lines}",
        "comphash": f"comphash -a {algorithm} {tmp_path}/releases/app.tar",
        "stats": "stats",
        "help": "help",
    }[command]
    events = run(service, Identity("t", "token", scope), line)
    allowed = (
        (scope.commands is None or command in scope.commands)
        and not (command == "lastlog" and scope.max_lines is not None and lines > scope.max_lines)
        and not (command == "lastlog" and follow and not scope.follow)
        and not (
            command == "comphash"
            and scope.algorithms is not None
            and algorithm not in scope.algorithms
        )
    )
    error = error_of(events)
    assert (error is None or error[0] != "forbidden") == allowed, (line, scope, error)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('name = "a b"\nsha256 = "{h}"', "auth.token[1].name"),
        ('name = "x"\nsha256 = "abc"', "auth.token[1].sha256"),
        ('name = "x"\nsha256 = "{h}"\ncommands = ["lastlg"]', "auth.token[1].commands"),
        ('name = "x"\nsha256 = "{h}"\nalgorithms = ["rot13"]', "auth.token[1].algorithms"),
        ('name = "x"\nsha256 = "{h}"\nmax_lines = 0', "auth.token[1].max_lines"),
        ('name = "x"\nsha256 = "{h}"\nroots = ["srv"]', "auth.token[1].roots"),
        ('name = "x"\nsha256 = "{h}"\nexpires = 2027-01-31T00:00:00', "auth.token[1].expires"),
        ('name = "x"\nsha256 = "{h}"\ncolour = "red"', "auth.token[1].colour"),
        (
            'name = "x"\nsha256 = "{h}"\n[[auth.token]]\nname = "x"\nsha256 = "{h}"',
            "auth.token[2].name",
        ),
    ],
)
def test_a_bad_named_token_names_its_key_and_never_shows_the_hash(
    tmp_path: Path, table: str, key: str
) -> None:
    digest = sha("whatever-token-000000")
    path = tmp_path / "gateway.toml"
    path.write_text("[[auth.token]]\n" + table.replace("{h}", digest) + "\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.key == key
    assert digest not in str(info.value)


def test_a_token_file_may_hold_named_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'# named\n[[token]]\nname = "ops"\nsha256 = "{sha(RELEASE)}"\ncommands = ["stats"]\n'
    )
    config = merge(Config(), {"auth": {"token_file": str(tokens)}})
    auth = Authenticator(grants_of(config), Clock())
    ops = auth.check("h", RELEASE)
    assert ops.name == "ops" and ops.scope.commands == frozenset({"stats"})
    tokens.write_text(f'[[token]]\nname = "ops"\nsha256 = "{sha(RELEASE)}"\ncommands = ["nope"]\n')
    with pytest.raises(ConfigError) as info:
        grants_of(config)
    assert info.value.key == "auth.token_file: token[1].commands"


def test_check_config_hides_named_token_hashes(tmp_path: Path) -> None:
    shown = redacted(config_with(tmp_path))
    assert [t["sha256"] for t in shown["auth"]["token"]] == ["***", "***"]
    assert shown["auth"]["token"][0]["name"] == "dashboard"


def test_token_new_prints_a_token_whose_hash_is_in_the_block(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["token", "new", "dashboard"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[1].removeprefix("# ")
    block = out[out.index("[[auth.token]]") :]
    path = tmp_path / "gateway.toml"
    path.write_text(block)
    config = load(str(path))
    assert Authenticator(grants_of(config), Clock()).check("h", token).name == "dashboard"
    assert main(["token", "new", "no spaces"]) == 2
    assert "letters, digits" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[auth.unix]]\nname = "root"\n', "auth.unix[1]"),
        ('[[auth.unix]]\nname = "root"\nuid = 0\ngid = 0\n', "auth.unix[1]"),
        ('[[auth.unix]]\nname = "root"\nuid = -1\n', "auth.unix[1].uid"),
        ('[[auth.unix]]\nname = "root"\nuid = 0\ncommands = ["x"]\n', "auth.unix[1].commands"),
        ("[[auth.unix]]\nuid = 0\n", "auth.unix[1].name"),
        ('[[auth.certificate]]\nname = "ci"\ncn = ""\n', "auth.certificate[1].cn"),
        ('[[auth.certificate]]\nname = "ci"\nsha256 = "x"\n', "auth.certificate[1].sha256"),
    ],
)
def test_bad_unix_and_certificate_identities_name_their_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.key == key


def test_unix_users_groups_and_certificates_map_to_identities(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[[auth.unix]]\nname = "root"\nuid = 0\n'
        '[[auth.unix]]\nname = "admins"\ngid = 4\nmax_lines = 5\n'
        '[[auth.certificate]]\nname = "ci"\ncn = "ci.example.org"\ncommands = ["comphash"]\n'
    )
    config = load(str(path))
    auth = Authenticator(grants_of(config), Clock())
    assert not auth.enabled
    admission = Admission.from_config(config, Clock())
    auth = admission.auth
    assert auth.enabled  # proofs other than tokens turn auth on
    root = auth.unix_peer(0, 100)
    assert root is not None and (root.name, root.how, root.shown) == (
        "root",
        "unix",
        'unix user "root"',
    )
    admins = auth.unix_peer(1000, 4)
    assert admins is not None and admins.scope.max_lines == 5
    assert auth.unix_peer(1000, 1000) is None
    ci = auth.certificate("ci.example.org")
    assert ci is not None and ci.shown == 'certificate "ci"' and auth.certificate("other") is None
    assert auth.current(ci) == ci
    admission.reload(load(None))  # all removed
    assert auth.current(ci) is None and auth.unix_peer(0, 0) is None


def test_a_scoped_resume_replays_at_most_max_lines_and_counts_the_rest(tmp_path: Path) -> None:
    clock = Clock()
    service, _ = service_for(config_with(tmp_path), clock)
    service.identities = lambda identity: identity
    log = tmp_path / "syslog"
    st = log.stat()
    first = f"{epoch_of((st.st_dev, st.st_ino))}-7"  # right after "line 0\n" (7 bytes)
    out: list[str] = []
    scoped = Identity("t", "token", Scope(max_lines=3))
    conversation = LineConversation(
        service, Client("tcp", "h", identity=scoped), out.extend, lambda: None
    )
    conversation.start()
    conversation.submit(f"lastlog -f --lines=1 --after {first}")
    assert out == [
        "Begin lastlog",
        "... 296 lines may be missing (older than what this follow may replay) ...",
        "line 297",
        "line 298",
        "line 299",
    ]
    conversation.submit("stop")
    out.clear()
    unscoped = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    unscoped.start()
    unscoped.submit(f"lastlog -f --lines=1 --after {first}")
    # Everyone else: all that is kept (the follow keeps 100 lines here).
    assert out[1] == "... 199 lines may be missing (older than what this follow may replay) ..."
    assert out[2:] == [f"line {i}" for i in range(200, 300)]


def test_identity_tables_are_not_environment_variables() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {"GATEWAY_AUTH_TOKEN": "a-secret-token-0123456789"})
    assert info.value.key == "GATEWAY_AUTH_TOKEN" and "unknown" in str(info.value)
    assert "a-secret-token" not in str(info.value)


@pytest.mark.parametrize(
    "narrowed",
    [
        {"commands": frozenset({"lastlog"})},
        {"max_lines": 10},
        {"follow": False},
        {"roots": ("/srv",)},
        {"algorithms": frozenset({"sha256"})},
    ],
)
def test_a_scope_is_full_only_without_narrowing(narrowed: dict[str, object]) -> None:
    assert Scope().full and Scope(max_clients=2, expires=1.0).full  # a share, a date: still full
    scope = Scope(**narrowed)  # type: ignore[arg-type]
    assert not scope.full
    assert dataclasses.replace(scope, **{k: Scope().__dict__[k] for k in narrowed}).full
    assert scope == Scope(**narrowed) and hash(scope) == hash(Scope(**narrowed))  # type: ignore[arg-type]

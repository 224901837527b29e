"""A Hypothesis state machine of scopes, reloads and commands over the three
transports' conversations (line, WebSocket JSON, HTTP): a command is refused
as forbidden exactly when the token's scope, as last loaded, says so."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from treq.testing import StubTreq
from twisted.internet.task import Clock

from gateway.commands.follow import Followers
from gateway.commands.lastlog import prime_file
from gateway.commands.registry import Runners, build_service
from gateway.config import Config, HTTPConfig, merge
from gateway.core.auth import Authenticator, digest
from gateway.core.command import Client
from gateway.core.quota import ClientQuota
from gateway.core.scope import Identity, Scope
from gateway.frontends.admission import Admission
from gateway.frontends.http.routes import RestAPI
from gateway.sessions.json_conversation import JSONConversation
from gateway.sessions.line import LineConversation

from .support.fakes import FakeSpawner, call_now, run_now

TOKEN = "machine-token-0123456789abcdef00"
COMMANDS = ["lastlog", "comphash", "stats", "help"]
ALGORITHMS = ["sha1", "sha256", "md5"]
#: (transport, forbidden) -> how often the machine saw it (see the last test).
SEEN: dict[tuple[str, bool], int] = {}

SCOPES = st.builds(
    Scope,
    commands=st.none() | st.frozensets(st.sampled_from(COMMANDS)),
    max_lines=st.none() | st.integers(1, 40),
    follow=st.booleans(),
    algorithms=st.none() | st.frozensets(st.sampled_from(ALGORITHMS)),
    roots=st.none() | st.just(("RELEASES",)),
)


class Scopes(RuleBasedStateMachine):
    @initialize(scope=SCOPES)
    def start(self, scope: Scope) -> None:
        self.dir = Path(tempfile.mkdtemp())
        (self.dir / "syslog").write_text("".join(f"line {i}\n" for i in range(100)))
        (self.dir / "releases").mkdir()
        (self.dir / "releases" / "app.tar").write_bytes(b"release")
        (self.dir / "secret").write_bytes(b"secret")
        self.clock = Clock()
        config = merge(
            Config(),
            {"lastlog": {"source": str(self.dir / "syslog")}, "limits": {"commands_per_second": 0}},
        )
        runners = Runners(
            run_now,
            run_now,
            call_now,
            FakeSpawner().reactor,
            Followers(self.clock, run_now, 100, prime_file),
        )
        self.service = build_service(config, self.clock, ClientQuota(100), runners)
        self.auth = Authenticator([], self.clock)
        self.service.identities = self.auth.current
        self.reload(scope)
        # The line transports (netcat, WebSocket text): one logged-in conversation.
        self.lines: list[str] = []
        self.line = LineConversation(
            self.service, Client("tcp", "h"), self.lines.extend, lambda: None, auth=self.auth
        )
        self.line.start()
        self.line.submit(f"auth {TOKEN}")
        assert self.lines == ["Authenticated."]
        # WebSocket JSON.
        self.messages: list[dict[str, Any]] = []
        self.json = JSONConversation(
            self.service,
            Client("websocket", "h"),
            lambda m: self.messages.append(json.loads(m)),
            lambda: None,
            8,
            self.auth,
        )
        self.json.start()
        self.json.receive(json.dumps({"id": 0, "auth": TOKEN}))
        self.next_id = 1
        # HTTP.
        admission = Admission(ClientQuota(100), self.clock, self.auth)
        self.http: Any = StubTreq(
            RestAPI(admission, self.service, HTTPConfig(), lambda s: {}).resource()
        )

    def reload(self, scope: Scope) -> None:
        roots = tuple(str(self.dir / "releases") for _ in scope.roots or ())
        self.scope = Scope(
            commands=scope.commands,
            max_lines=scope.max_lines,
            follow=scope.follow,
            algorithms=scope.algorithms,
            roots=roots or None,
        )
        self.auth.replace_tokens([(digest(TOKEN), Identity("t", "token", self.scope))])

    @rule(scope=SCOPES)
    def sighup(self, scope: Scope) -> None:
        self.reload(scope)

    def allowed(self, command: str, lines: int, follow: bool, algorithm: str, inside: bool) -> bool:
        s = self.scope
        if s.commands is not None and command not in s.commands:
            return False
        if command == "lastlog":
            return (s.max_lines is None or lines <= s.max_lines) and (s.follow or not follow)
        if command == "comphash":
            return (s.algorithms is None or algorithm in s.algorithms) and (
                s.roots is None or inside
            )
        return True

    def path(self, inside: bool) -> str:
        return str(self.dir / "releases" / "app.tar") if inside else str(self.dir / "secret")

    @rule(
        transport=st.sampled_from(["line", "json", "http"]),
        command=st.sampled_from(COMMANDS),
        lines=st.integers(1, 50),
        follow=st.booleans(),
        algorithm=st.sampled_from(ALGORITHMS),
        inside=st.booleans(),
    )
    def run(
        self, transport: str, command: str, lines: int, follow: bool, algorithm: str, inside: bool
    ) -> None:
        if transport == "http":
            follow = False  # (an HTTP follow streams until the client leaves)
        expected = self.allowed(command, lines, follow, algorithm, inside)
        forbidden = {"line": self.run_line, "json": self.run_json, "http": self.run_http}[
            transport
        ](command, lines, follow, algorithm, inside)
        assert forbidden == (not expected), (transport, command, lines, follow, algorithm, inside)
        SEEN[(transport, forbidden)] = SEEN.get((transport, forbidden), 0) + 1

    def run_line(
        self, command: str, lines: int, follow: bool, algorithm: str, inside: bool
    ) -> bool:
        text = {
            "lastlog": f"lastlog {'-f ' if follow else ''}{lines}",
            "comphash": f"comphash -a {algorithm} {self.path(inside)}",
            "stats": "stats",
            "help": "help",
        }[command]
        before = len(self.lines)
        self.line.submit(text)
        if follow:
            self.line.submit("stop")
        said = self.lines[before:]
        return any(line.startswith('An error occurred: token "t" may') for line in said)

    def run_json(
        self, command: str, lines: int, follow: bool, algorithm: str, inside: bool
    ) -> bool:
        args: dict[str, object] = {}
        if command == "lastlog":
            args = {"lines": lines, "follow": follow}
        elif command == "comphash":
            args = {"algorithm": algorithm, "path": self.path(inside)}
        id = self.next_id
        self.next_id += 1
        self.json.receive(json.dumps({"id": id, "command": command, "args": args}))
        if follow:
            self.json.receive(json.dumps({"id": id, "cancel": True}))
        answers = [m for m in self.messages if m.get("id") == id]
        return any(m["type"] == "error" and m["code"] == "forbidden" for m in answers)

    def run_http(
        self, command: str, lines: int, follow: bool, algorithm: str, inside: bool
    ) -> bool:
        query = {
            "lastlog": f"/lastlog?lines={lines}",
            "comphash": f"/comphash?algorithm={algorithm}&path={self.path(inside)}",
            "stats": "/stats",
            "help": "/commands",
        }[command]
        got: list[Any] = []
        self.http.get(
            "http://localhost" + query, headers={"Authorization": f"Bearer {TOKEN}"}
        ).addBoth(got.append)
        return bool(got[0].code == 403)


Scopes.TestCase.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
TestScopes = Scopes.TestCase


def test_the_machine_saw_both_outcomes_on_every_transport() -> None:
    if not SEEN:
        TestScopes().runTest()
    for transport in ("line", "json", "http"):
        assert SEEN.get((transport, True)) and SEEN.get((transport, False)), SEEN

from twisted.internet.task import Clock

from gateway.commands.lastlog import BATCH, send_in_batches
from gateway.core.events import Event, Lines
from gateway.core.flow import Flow


def test_watchers_follow_pause_and_resume() -> None:
    flow = Flow()
    calls: list[str] = []
    unwatch = flow.watch(lambda: calls.append("pause"), lambda: calls.append("resume"))
    flow.pauseProducing()
    flow.pauseProducing()  # once is enough
    flow.resumeProducing()
    unwatch()
    flow.pauseProducing()
    assert calls == ["pause", "resume"]


def test_a_new_watcher_of_a_paused_flow_is_paused_at_once() -> None:
    flow = Flow()
    flow.pauseProducing()
    calls: list[str] = []
    flow.watch(lambda: calls.append("pause"), lambda: None)
    assert calls == ["pause"]


def test_stalled_client_is_given_up_on() -> None:
    clock = Clock()
    stalled: list[bool] = []
    flow = Flow(clock, 30.0, lambda: stalled.append(True))
    flow.pauseProducing()
    clock.advance(29)
    flow.resumeProducing()  # it caught up in time
    clock.advance(10)
    assert stalled == []
    flow.pauseProducing()
    clock.advance(30)
    assert stalled == [True]


def test_batches_wait_for_the_client() -> None:
    flow = Flow()
    events: list[Event] = []
    lines = [f"l{i}" for i in range(BATCH * 3)]
    flow.pauseProducing()
    done = send_in_batches(lines, events.append, flow, "the source")
    assert events == [] and not done.called
    flow.resumeProducing()
    assert len(events) == 3 and done.called
    assert [line for e in events if isinstance(e, Lines) for line in e.lines] == lines
    fired: list[str] = []
    done.addCallback(fired.append)
    assert fired == ["the source"]


def test_one_batch_is_sent_at_once_and_answers_at_once() -> None:
    events: list[Event] = []
    done = send_in_batches(["a", "b"], events.append, Flow(), "/var/log/syslog")
    fired: list[str] = []
    done.addCallback(fired.append)
    assert [e.lines for e in events if isinstance(e, Lines)] == [("a", "b")]
    assert fired == ["/var/log/syslog"]
    nothing = send_in_batches([], events.append, Flow(), "empty")
    nothing.addCallback(fired.append)
    assert len(events) == 1 and fired[-1] == "empty"


def test_batches_stop_when_cancelled() -> None:
    flow = Flow()
    events: list[Event] = []
    flow.pauseProducing()
    done = send_in_batches(["a"] * (BATCH * 2), events.append, flow, None)
    done.addErrback(lambda f: None)
    done.cancel()
    flow.resumeProducing()
    assert events == []

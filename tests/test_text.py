import pytest

from gateway.core.events import Error, Lines, Progress, Result
from gateway.sessions.text import TextRenderer, encode_lines, error_line

FRAME = ("Begin lastlog", "End lastlog")


def test_frame_once_around_all_chunks() -> None:
    r = TextRenderer(FRAME)
    out = [*r.render(Lines(("a",))), *r.render(Lines(("b", "c"))), *r.render(Result("lastlog"))]
    assert out == ["Begin lastlog", "a", "b", "c", "End lastlog"]


def test_empty_log_still_framed() -> None:
    assert TextRenderer(FRAME).render(Result("lastlog")) == ["Begin lastlog", "End lastlog"]


def test_error_before_output_is_not_framed() -> None:
    out = TextRenderer(FRAME).render(Error("unavailable", "No log source found"))
    assert out == ["An error occurred: No log source found"]


def test_error_after_output_closes_the_frame() -> None:
    r = TextRenderer(FRAME)
    r.render(Lines(("a",)))
    assert r.render(Error("timeout", "lastlog timed out after 10 s")) == [
        "An error occurred: lastlog timed out after 10 s",
        "End lastlog",
    ]


@pytest.mark.parametrize(
    ("code", "message", "line"),
    [
        ("unknown_command", "Command not found.", "Command not found."),
        ("missing_argument", "Please provide a path.", "Please provide a path."),
        ("quota_exceeded", "Too many connections. Bye!", "Too many connections. Bye!"),
        (
            "not_a_file",
            "Not a regular file: /dev/zero",
            "An error occurred: Not a regular file: /dev/zero",
        ),
    ],
)
def test_seed_wording(code: str, message: str, line: str) -> None:
    assert error_line(code, message) == line


def test_progress_is_silent_and_result_text_is_printed() -> None:
    r = TextRenderer()
    assert r.render(Progress(1, 2)) == []
    assert r.render(Result("comphash", text=("File hash is: ab",))) == ["File hash is: ab"]


def test_not_an_event() -> None:
    with pytest.raises(TypeError):
        TextRenderer().render("nope")  # type: ignore[arg-type]


def test_encode_lines_is_one_block() -> None:
    assert encode_lines(["a", "ü"]) == "a\nü\n".encode()
    assert encode_lines([]) == b""

"""Manifest lines read as GNU coreutils 9 reads them (each case checked
against ``sha256sum -c`` when it was written; the e2e tests run the real tool)."""

from __future__ import annotations

import pytest

from gateway.commands.manifest import (
    FAILED,
    OK,
    UNREADABLE,
    Entry,
    Tally,
    check_line,
    parse_line,
    parse_manifest,
    shown_name,
)

H256 = "87428fc522803d31065e7bce3cf03fe475096631e5e07bbd7a0fde60c4cf25c7"
H1 = "3f786850e387550fdab836ed7e6dc881de23001b"


@pytest.mark.parametrize(
    ("line", "path", "algorithm"),
    [
        (f"{H256}  a", "a", "sha256"),
        (f"{H256} *a", "a", "sha256"),  # binary mode
        (f"{H256} a", "a", "sha256"),  # one space
        (f"   {H256}  a", "a", "sha256"),  # leading blanks
        (f"{H256}  a\r", "a", "sha256"),  # written on Windows
        (f"{H256.upper()}  a", "a", "sha256"),
        (f"{H256}  sp ace ", "sp ace ", "sha256"),  # the rest of the line is the name
        (f"{H256}   ", " ", "sha256"),  # a name of one space
        (f"\\{H256}  new\\nline", "new\nline", "sha256"),
        (f"\\{H256}  back\\\\slash", "back\\slash", "sha256"),
        (f"{H256}  back\\slash", "back\\slash", "sha256"),  # not escaped: as it is
        (f"{H1}  a", "a", "sha1"),
        ("d41d8cd98f00b204e9800998ecf8427e  a", "a", "md5"),
        (f"SHA256 (a) = {H256}", "a", "sha256"),
        (f"SHA256 (a (1)) = {H256}", "a (1)", "sha256"),
        (f"SHA1 (x) = {H1}", "x", "sha1"),
        (f"BLAKE3 (x) = {H256}", "x", "blake3"),
        (f"\\SHA256 (new\\nline) = {H256}", "new\nline", "sha256"),
    ],
)
def test_good_lines(line: str, path: str, algorithm: str) -> None:
    entry = parse_line(line, None)
    assert entry is not None and (entry.path, entry.algorithm) == (path, algorithm)
    assert entry.hex == entry.hex.lower()


@pytest.mark.parametrize(
    "line",
    [
        "this line is not a checksum",
        "   ",
        f"{H256}",  # no name
        f"{H256}x  a",  # not hex
        f"{H256[:-1]}  a",  # a length no algorithm has
        f"SHA256 (a) = {H1}",  # a tag whose digest has the wrong length
        f"MD4 (a) = {H256[:32]}",  # an unknown tag
        f"\\{H256}  bad\\escape",  # an escape coreutils does not know
        f"{H256}  nul\x00byte",  # no file name holds a NUL
    ],
)
def test_malformed_lines(line: str) -> None:
    assert parse_line(line, None) is None


def test_a_given_algorithm_reads_every_line_as_it() -> None:
    entry = parse_line(f"{H256}  a", "blake3")  # b3sum writes what sha256sum writes
    assert entry is not None and entry.algorithm == "blake3"
    assert parse_line(f"{H1}  a", "sha256") is None  # a sha1 line is not a sha256 one
    assert parse_line(f"SHA256 (a) = {H256}", "blake3") is None


def test_a_manifest_skips_comments_and_empty_lines_and_counts_the_rest() -> None:
    found = parse_manifest(["# made by CI", f"{H256}  a", "", "junk", "   ", f"{H1}  b"])
    assert found.entries == (Entry(2, "a", "sha256", H256), Entry(6, "b", "sha1", H1))
    assert found.malformed == 2  # "junk" and the blank one; the empty line is no line


def test_check_lines_escape_only_names_with_a_newline() -> None:
    assert check_line("a b", OK) == "a b: OK"
    assert check_line("x\\y", FAILED) == "x\\y: FAILED"  # as sha256sum -c 9.1 prints it
    assert check_line("new\nline", UNREADABLE) == "\\new\\nline: FAILED open or read"
    assert shown_name("a\\b\nc") == "\\a\\\\b\\nc"


def tally(**kw: object) -> Tally:
    base: dict[str, object] = dict(entries=3, ok=3, failed=0, unreadable=0, missing=0, malformed=0)
    base.update(kw)
    return Tally(**base)  # type: ignore[arg-type]


def test_what_passes_is_what_exits_0() -> None:
    assert tally().passed and tally().warnings("M") == []
    assert not tally(ok=2, failed=1).passed
    assert not tally(ok=2, unreadable=1, missing=1).passed
    assert tally(ok=2, unreadable=1, missing=1, ignore_missing=True).passed
    assert not tally(ok=2, unreadable=1, missing=0, ignore_missing=True).passed  # EACCES
    assert tally(malformed=4).passed
    assert not tally(malformed=4, strict=True).passed
    assert not tally(entries=0, ok=0).passed
    nothing = tally(entries=1, ok=0, unreadable=1, missing=1, ignore_missing=True)
    assert not nothing.passed


def test_warnings_read_as_coreutils_writes_them() -> None:
    assert tally(ok=0, failed=2, unreadable=1, missing=1, malformed=1).warnings("M") == [
        "comphash: WARNING: 1 line is improperly formatted",
        "comphash: WARNING: 1 listed file could not be read",
        "comphash: WARNING: 2 computed checksums did NOT match",
    ]
    assert tally(ok=0, failed=1, malformed=2, unreadable=3).warnings("M") == [
        "comphash: WARNING: 2 lines are improperly formatted",
        "comphash: WARNING: 3 listed files could not be read",
        "comphash: WARNING: 1 computed checksum did NOT match",
    ]
    assert tally(entries=0, ok=0, malformed=1).warnings("M") == [
        "comphash: M: no properly formatted checksum lines found"
    ]
    gone = tally(entries=1, ok=0, unreadable=1, missing=1, ignore_missing=True)
    assert gone.warnings("M") == ["comphash: M: no file was verified"]

"""Checksum manifests, read and answered as GNU coreutils does (``sha256sum -c``).

Pure: text in, entries and lines out.  A manifest line is one of

- ``<hex>  <path>`` (``sha256sum``, ``b3sum``; also ``<hex> *<path>`` and a
  single space), with a leading backslash when the path is escaped
  (``\\n`` for a newline, ``\\\\`` for a backslash);
- ``ALGO (<path>) = <hex>`` (the BSD ``--tag`` form);
- a comment (``#`` first) or an empty line, which are skipped.

Anything else is an improperly formatted line: counted, never fatal.  Which
algorithm a line uses comes from its tag, else from the length of its digest
(64 hex digits: sha256; ``-a blake3`` says they are BLAKE3, as ``b3sum``
writes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Digest length in hex digits.
HEX_LENGTH: dict[str, int] = {
    "md5": 32,
    "sha1": 40,
    "sha224": 56,
    "sha256": 64,
    "sha384": 96,
    "sha512": 128,
    "blake2b": 128,
    "blake2s": 64,
    "blake3": 64,
}

#: The algorithm a digest of this length is taken for when nothing says.
BY_LENGTH: dict[int, str] = {
    32: "md5",
    40: "sha1",
    56: "sha224",
    64: "sha256",
    96: "sha384",
    128: "sha512",
}

#: BSD tags (``sha256sum --tag``, ``b2sum --tag``) and the algorithm each names.
TAGS: dict[str, str] = {
    "MD5": "md5",
    "SHA1": "sha1",
    "SHA224": "sha224",
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
    "BLAKE2b": "blake2b",
    "BLAKE2s": "blake2s",
    "BLAKE3": "blake3",
}

_HEX = "0123456789abcdefABCDEF"


@dataclass(frozen=True, slots=True)
class Entry:
    """One checksum to check: where it was (line ``number``), what it says."""

    number: int
    path: str
    algorithm: str
    hex: str  # lower case


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]
    #: Lines that are neither an entry, a comment nor empty.
    malformed: int


def _unescape(name: str) -> str | None:
    """A path from an escaped line (``\\n``, ``\\r``, ``\\\\``), or ``None`` if
    it holds another escape."""
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\":
            nxt = name[i + 1 : i + 2]
            if nxt == "n":
                out.append("\n")
            elif nxt == "r":
                out.append("\r")
            elif nxt == "\\":
                out.append("\\")
            else:
                return None
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return bool(text) and not text.strip(_HEX)


def parse_line(line: str, algorithm: str | None) -> Entry | None:
    """One line's entry (``number`` 0), or ``None`` if improperly formatted.

    ``algorithm``: what every line uses (``-a``); ``None``: each line says,
    by its tag or its digest's length.
    """
    if "\x00" in line:
        return None  # no file name holds a NUL
    if line.endswith("\r"):
        line = line[:-1]  # a manifest written on Windows
    text = line.lstrip(" \t")
    escaped = text.startswith("\\")
    if escaped:
        text = text[1:]
    tagged = _parse_tag(text, algorithm)
    if tagged is not None:
        algo, path, digest = tagged
    else:
        parsed = _parse_plain(text, algorithm)
        if parsed is None:
            return None
        algo, path, digest = parsed
    if escaped:
        unescaped = _unescape(path)
        if unescaped is None:
            return None
        path = unescaped
    if not path:
        return None
    return Entry(0, path, algo, digest.lower())


def _parse_tag(text: str, algorithm: str | None) -> tuple[str, str, str] | None:
    tag, sep, rest = text.partition(" (")
    if not sep or tag not in TAGS:
        return None
    algo = TAGS[tag]
    if algorithm is not None and algo != algorithm:
        return None
    path, sep, digest = rest.rpartition(") = ")
    if not sep or not _is_hex(digest) or len(digest) != HEX_LENGTH[algo]:
        return None
    return algo, path, digest


def _parse_plain(text: str, algorithm: str | None) -> tuple[str, str, str] | None:
    digest, sep, rest = text.partition(" ")
    if not sep or not _is_hex(digest):
        return None
    if algorithm is not None:
        if len(digest) != HEX_LENGTH.get(algorithm, -1):
            return None
        algo = algorithm
    else:
        found = BY_LENGTH.get(len(digest))
        if found is None:
            return None
        algo = found
    if rest[:1] in (" ", "*") and len(rest) > 1:
        rest = rest[1:]  # the mode character: text or binary, the same on Linux
    return algo, rest, digest


def parse_manifest(lines: Iterable[str], algorithm: str | None = None) -> Manifest:
    """Every entry of a manifest, in order, and how many lines were malformed."""
    entries: list[Entry] = []
    malformed = 0
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        entry = parse_line(line, algorithm)
        if entry is None:
            malformed += 1
        else:
            entries.append(Entry(number, entry.path, entry.algorithm, entry.hex))
    return Manifest(tuple(entries), malformed)


def shown_name(path: str) -> str:
    """``path`` as a check line shows it: escaped, after a backslash, when it
    holds a newline (as coreutils 9 does), else as it is."""
    if "\n" not in path:
        return path
    escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "\\" + escaped


#: What a check says of one entry.
OK = "OK"
FAILED = "FAILED"
UNREADABLE = "FAILED open or read"


def check_line(path: str, outcome: str) -> str:
    """``path: OK`` and its siblings, exactly as ``sha256sum -c`` prints them."""
    return f"{shown_name(path)}: {outcome}"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@dataclass(frozen=True)
class Tally:
    """How a check went: what ``sha256sum -c`` counts."""

    entries: int  # properly formatted lines
    ok: int
    failed: int
    unreadable: int  # listed files that could not be read (missing ones among them)
    missing: int  # of those, the ones that do not exist (``--ignore-missing`` skips them)
    malformed: int
    ignore_missing: bool = False
    strict: bool = False

    @property
    def verified(self) -> int:
        return self.ok + self.failed

    @property
    def passed(self) -> bool:
        """What coreutils' exit status 0 means."""
        if self.entries == 0 or (self.ignore_missing and self.verified == 0):
            return False
        counted_unreadable = self.unreadable - (self.missing if self.ignore_missing else 0)
        return self.failed == 0 and counted_unreadable == 0 and not (self.strict and self.malformed)

    def warnings(self, manifest: str, program: str = "comphash") -> list[str]:
        """The lines coreutils writes on stderr after a check, in its order."""
        if self.entries == 0:
            return [f"{program}: {manifest}: no properly formatted checksum lines found"]
        out: list[str] = []
        if self.malformed:
            verb = "line is" if self.malformed == 1 else "lines are"
            out.append(f"{program}: WARNING: {self.malformed} {verb} improperly formatted")
        unreadable = self.unreadable - (self.missing if self.ignore_missing else 0)
        if unreadable:
            files = _plural(unreadable, "listed file", "listed files")
            out.append(f"{program}: WARNING: {files} could not be read")
        if self.failed:
            sums = _plural(self.failed, "computed checksum", "computed checksums")
            out.append(f"{program}: WARNING: {sums} did NOT match")
        if self.ignore_missing and self.verified == 0:
            out.append(f"{program}: {manifest}: no file was verified")
        return out

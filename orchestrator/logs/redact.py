r"""Streaming secret redaction for job logs.

Job output is shown to users while the job runs, so secrets have to be masked
on the fly: in whatever chunks the container happens to write, without ever
letting a complete secret through, and without delaying more output than a
secret could still be completing.

Pure code: no I/O, no asyncio.  Matching uses Hyperscan (thousands of literals
at GB/s) and falls back to the Rust ``aho-corasick`` crate where Hyperscan has
no wheel (e.g. linux/aarch64); both report every, also overlapping, match.

Recognised forms (:func:`secret_forms`), of the whole value and, for a
multi-line value (PEM keys), of each of its lines:

* the raw bytes;
* base64, standard and URL-safe, padded or not; inside a longer base64 stream
  at any of the three alignments (the characters made purely of the value's
  bits); wrapped at 76 columns (GNU ``base64``, ``basenc``) and 64 columns
  (``openssl base64``, PEM) when the value is encoded alone, including the
  wrapped alignment-0 form, so that ``echo "$S" | base64`` (the value and a
  newline) is masked up to its last 1-3 characters, which mix in the
  newline's bits;
* URL encoding: ``quote`` (nothing safe) and ``quote_plus``, each with upper-
  and lower-case ``%xx``, and ``quote``'s default that leaves ``/`` alone;
* JSON string contents: ``\uXXXX``-escaped, UTF-8, Go's (HTML characters
  escaped), each also with an escaped solidus ``\/`` (PHP ``json_encode``);
* shell quoting as shells print variables: ``'\''`` (bash ``set``,
  ``${S@Q}``), ``'"'"'`` (dash and busybox ``set``/``export -p``,
  ``shlex.quote``), and ``"..."`` with a backslash before ``"``, ``\``,
  ``$`` and backquote (bash ``declare -p``/``export -p``);
* hex: contiguous lower- and upper-case (``hexdump -ve '1/1 "%02x"'``,
  ``xxd -p`` of up to 30 bytes), ``xxd -p [-u]`` wrapped at 60 digits a line
  from the value's start, and ``od -An -tx1`` (``" 73 33 ..."``, 16 bytes a
  line, from the first digit).

End of stream: bytes still held back are the beginning of a secret that never
completed, so :meth:`StreamRedactor.flush` masks them.  They are never shown
raw, not even while the job is quiet: there is no flush on a pause.

Known limits (documented rather than silently assumed):

* A secret that shares bytes with the mask can be re-assembled from the mask
  and its neighbours (e.g. a secret containing ``"ED]"``); choose a mask that
  cannot occur in secrets if that matters.  A mask that *contains* a
  registered form is rejected outright.
* Line-wrapped encodings are recognised only where the line breaks fall as
  when the value is encoded alone: a secret inside a longer wrapped base64
  stream (a file, a certificate bundle) is missed if a line break falls
  inside its encoding at another column; so is hex of a secret at another
  offset of a longer ``xxd -p`` or ``od`` dump.  Other wrap widths and CRLF
  line ends (MIME) are not covered.
* Other dump layouts are not recognised: ``od -x`` (16-bit words, byte-
  swapped on little-endian machines), ``od`` with addresses for values of
  more than 16 bytes, ``od``'s ``*`` for repeated lines, ``xxd`` and
  ``hexdump -C`` canonical dumps (whose ASCII column shows the value 16 bytes
  a line).  Nor are bash's ``$'...'`` quoting of values with control
  characters, ``printf %q``, base32 or other encodings not listed above.
* Deliberate exfiltration -- the value reversed, compressed, encrypted, or
  printed one character per line -- cannot be masked by this or any log
  filter.  The defence against a hostile job is not giving it the secret.
* A stream that ends inside a possible secret prefix ends with a mask, and a
  quiet job's partial last line stays held back while it could still become a
  secret: the price of never showing a secret's beginning.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol
from urllib.parse import quote, quote_plus

import ahocorasick_rs

__all__ = [
    "DEFAULT_MASK",
    "DEFAULT_MIN_SECRET_LENGTH",
    "SecretSet",
    "SecretTooShortError",
    "StreamRedactor",
    "secret_forms",
]

DEFAULT_MASK: bytes = b"[MASKED]"
DEFAULT_MIN_SECRET_LENGTH: int = 6


class SecretTooShortError(ValueError):
    """A secret too short to mask without garbling unrelated output.

    The message names the secret (if a name was given) but never contains its
    value, because error messages end up in logs too.
    """


# --------------------------------------------------------------------------- forms


def secret_forms(value: str | bytes) -> set[bytes]:
    """Every byte string under which ``value`` may show up in a job log.

    Jobs rarely print a secret verbatim only: tools base64 it into headers,
    URL-encode it into query strings, JSON-escape it into API payloads, hex-
    dump it, shells quote it when they list variables, or a PEM key is
    printed line by line.  The module docstring lists the forms and what is
    not covered.  Includes forms of any length (empty ones excepted);
    :class:`SecretSet` drops those below its minimum length.
    """
    text = value if isinstance(value, str) else _utf8_or_none(value)
    raw = value.encode() if isinstance(value, str) else bytes(value)
    forms = _encoded_forms(raw, text)
    if b"\n" in raw:
        # Multi-line values (PEM keys, kubeconfigs) are usually printed line by
        # line, so each line is a secret of its own.
        if text is not None:
            for line_text in text.split("\n"):
                line_text = line_text.strip("\r")
                if line_text:
                    forms |= _encoded_forms(line_text.encode(), line_text)
        else:
            for line in raw.split(b"\n"):
                line = line.strip(b"\r")
                if line:
                    forms |= _encoded_forms(line, None)
    forms.discard(b"")
    return forms


def _utf8_or_none(value: bytes) -> str | None:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


_GO_JSON_ESCAPES: Final = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


# Columns at which tools wrap base64 of a value they encode alone: GNU ``base64``
# and ``basenc`` (76), ``openssl base64`` and PEM bodies (64).
_BASE64_COLUMNS: Final = (64, 76)
# ``xxd -p`` writes 30 bytes (60 hex digits) per line; ``od -An -tx1`` 16 bytes.
_XXD_PLAIN_COLUMNS: Final = 60
_OD_BYTES_PER_LINE: Final = 16
_UPPER_ESCAPE: Final = re.compile(rb"%[0-9A-F]{2}")
_SHELL_DOUBLE_QUOTED: Final = re.compile(rb'(["\\$`])')


def _wrap(data: bytes, columns: int) -> bytes:
    if len(data) <= columns:
        return data
    return b"\n".join(data[i : i + columns] for i in range(0, len(data), columns))


def _encoded_forms(raw: bytes, text: str | None) -> set[bytes]:
    forms = {raw}
    _base64_forms(raw, forms)
    _hex_forms(raw, forms)
    for safe in ("", "/"):  # "/" is urllib.parse.quote's default
        upper = quote(raw, safe=safe).encode("ascii")
        forms.add(upper)
        if b"%" in upper:
            forms.add(_UPPER_ESCAPE.sub(_lower_match, upper))
    upper = quote_plus(raw, safe="").encode("ascii")
    forms.add(upper)
    if b"%" in upper:
        forms.add(_UPPER_ESCAPE.sub(_lower_match, upper))
    if text is not None:
        _json_forms(text, forms)
    _shell_forms(raw, forms)
    return forms


def _base64_forms(raw: bytes, forms: set[bytes]) -> None:
    wrapped = len(raw) > 3 * min(_BASE64_COLUMNS) // 4  # else every line break would come after the value
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(raw)
        unpadded = encoded.rstrip(b"=")
        forms.add(encoded)
        forms.add(unpadded)
        # Inside a longer base64 stream the encoding of the secret depends on
        # its offset mod 3.  For each offset keep only the characters made
        # purely of secret bits (the neighbours here are zero bytes, but the
        # kept characters do not depend on them).
        core = b""
        for offset in range(3):
            shifted = encode(bytes(offset) + raw + bytes(2))
            first = -(-8 * offset // 6)
            stop = 8 * (offset + len(raw)) // 6
            forms.add(shifted[first:stop])
            if offset == 0:
                core = shifted[first:stop]
        if wrapped:
            # A tool encoding the value alone wraps from its first character;
            # the wrapped core also covers ``echo "$S" | base64``, which
            # encodes the value and a newline.
            for columns in _BASE64_COLUMNS:
                for form in (encoded, unpadded, core):
                    forms.add(_wrap(form, columns))


def _hex_forms(raw: bytes, forms: set[bytes]) -> None:
    lower = raw.hex().encode("ascii")
    upper = lower.upper()
    forms.update((lower, upper, _wrap(lower, _XXD_PLAIN_COLUMNS), _wrap(upper, _XXD_PLAIN_COLUMNS)))
    # ``od -An -tx1``: " 73 33 63 ..." with 16 bytes a line, each line starting
    # with a space (the form starts at the first digit).
    lines = (raw[i : i + _OD_BYTES_PER_LINE].hex(" ").encode("ascii") for i in range(0, len(raw), _OD_BYTES_PER_LINE))
    forms.add(b"\n ".join(lines))


def _lower_match(match: re.Match[bytes]) -> bytes:
    return match.group().lower()


def _json_forms(text: str, forms: set[bytes]) -> None:
    ascii_only = json.dumps(text)[1:-1].encode("ascii")
    unescaped = json.dumps(text, ensure_ascii=False)[1:-1]
    # Go's encoding/json (docker, kubectl, terraform output) also escapes
    # HTML characters and the JS line separators.
    go_style = unescaped
    for char, escape in _GO_JSON_ESCAPES:
        go_style = go_style.replace(char, escape)
    for form in (ascii_only, unescaped.encode(), go_style.encode()):
        forms.add(form)
        if b"/" in form:
            forms.add(form.replace(b"/", b"\\/"))  # PHP's json_encode escapes the solidus


def _shell_forms(raw: bytes, forms: set[bytes]) -> None:
    """The value as shells and ``shlex.quote`` print it (checked against bash 5.2, dash, busybox 1.35)."""
    if b"'" in raw:
        # NAME='it'\''s': bash ``set`` and ``${NAME@Q}``.
        forms.add(raw.replace(b"'", b"'\\''"))
        # NAME='it'"'"'s': dash and busybox ``set``/``export -p``, shlex.quote.
        forms.add(raw.replace(b"'", b"'\"'\"'"))
    # NAME="it's \"x\" \$y": bash ``declare -p``/``export -p`` (backslash
    # before ", \, $ and `).  Equal to the value itself without those.
    forms.add(_SHELL_DOUBLE_QUOTED.sub(rb"\\\1", raw))


# --------------------------------------------------------------------------- matching


class _Matcher(Protocol):
    def find(self, parts: Sequence[bytes]) -> list[tuple[int, int]]:
        """(start, end) of every occurrence, overlaps included, in ``b"".join(parts)``."""
        ...

    def clone(self) -> _Matcher:
        """A matcher that can scan concurrently with this one."""
        ...


class _HyperscanMatcher:
    """Hyperscan database in vectored mode; one scratch space per clone.

    Vectored mode scans ``[tail, chunk]`` as one block without copying, and
    unlike block mode it builds no "small write" engine, whose compile time
    explodes (~1 s) for some small sets of similar literals.  Patterns are
    compiled as regexes with every byte ``\\xHH``-escaped because the
    binding's pure-literal mode measures patterns with ``strlen`` and would
    truncate secrets containing NUL.  The scan releases the GIL, so a scratch
    space must never be shared between redactors.
    """

    def __init__(self, patterns: Sequence[bytes]) -> None:
        import hyperscan

        database = hyperscan.Database(mode=hyperscan.HS_MODE_VECTORED)
        database.compile(
            expressions=[b"".join(b"\\x%02x" % byte for byte in pattern) for pattern in patterns],
            ids=list(range(len(patterns))),
            elements=len(patterns),
            flags=0,
        )
        self._database = database
        self._lengths = [len(pattern) for pattern in patterns]
        self._scratch = database.scratch

    def clone(self) -> _HyperscanMatcher:
        twin = object.__new__(_HyperscanMatcher)
        twin._database = self._database
        twin._lengths = self._lengths
        twin._scratch = self._scratch.clone()
        return twin

    def find(self, parts: Sequence[bytes]) -> list[tuple[int, int]]:
        hits: list[tuple[int, int]] = []
        lengths = self._lengths

        def on_match(pattern_id: int, _start: int, end: int, _flags: int, _context: object) -> None:
            # Without SOM tracking Hyperscan reports start 0; literals know
            # their own length.
            hits.append((end - lengths[pattern_id], end))

        # The stub types ``data`` as one string; vectored mode takes a list.
        buffers: list[bytes] = list(parts)
        self._database.scan(buffers, match_event_handler=on_match, scratch=self._scratch)  # type: ignore[type-var]
        return hits


class _AhoCorasickMatcher:
    """Rust aho-corasick DFA: slower than Hyperscan but has wheels everywhere."""

    def __init__(self, patterns: Sequence[bytes]) -> None:
        self._automaton = ahocorasick_rs.BytesAhoCorasick(
            patterns,
            matchkind=ahocorasick_rs.MatchKind.Standard,  # required for overlapping search
            implementation=ahocorasick_rs.Implementation.DFA,
        )

    def clone(self) -> _AhoCorasickMatcher:
        return self  # immutable and thread-safe

    def find(self, parts: Sequence[bytes]) -> list[tuple[int, int]]:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return [(start, end) for _, start, end in self._automaton.find_matches_as_indexes(data, True)]


class _UnionMatcher:
    """Several matchers over the same data: every hit of each."""

    def __init__(self, matchers: Sequence[_Matcher]) -> None:
        self._matchers = list(matchers)

    def clone(self) -> _UnionMatcher:
        return _UnionMatcher([m.clone() for m in self._matchers])

    def find(self, parts: Sequence[bytes]) -> list[tuple[int, int]]:
        return [hit for matcher in self._matchers for hit in matcher.find(parts)]


# Hyperscan refuses a pattern longer than its limit (each byte is written as 4 characters, see _HyperscanMatcher), and
# some secrets are long: a forge runner's one-time registration is kilobytes of base64. Those go to aho-corasick.
_HYPERSCAN_MAX_FORM = 1024


def _hyperscan_or_split(patterns: Sequence[bytes]) -> _Matcher:
    long = [p for p in patterns if len(p) > _HYPERSCAN_MAX_FORM]
    if not long:
        return _HyperscanMatcher(patterns)
    short = [p for p in patterns if len(p) <= _HYPERSCAN_MAX_FORM]
    return _UnionMatcher([*([_HyperscanMatcher(short)] if short else []), _AhoCorasickMatcher(long)])


_BACKENDS: Final[dict[str, Callable[[Sequence[bytes]], _Matcher]]] = {
    "hyperscan": _hyperscan_or_split,
    "aho-corasick": _AhoCorasickMatcher,
}
_BACKEND: str = "hyperscan" if importlib.util.find_spec("hyperscan") is not None else "aho-corasick"


class _Compiled:
    """One frozen set of forms, compiled once per :class:`SecretSet` version.

    Besides the forms themselves it compiles their 4-byte heads: finding the
    heads in the last few bytes of a chunk is the cheap way to answer "could
    these trailing bytes still become a secret?", which decides how much
    output must be held back.
    """

    def __init__(self, forms: Iterable[bytes]) -> None:
        self.forms = sorted(forms)
        self.max_len = max(map(len, self.forms))
        backend = _BACKENDS[_BACKEND]
        self.matcher = backend(self.forms)
        heads = sorted({form[:4] for form in self.forms if len(form) > 4})
        self.heads = backend(heads) if heads else None
        self.short_prefixes = {form[:k] for form in self.forms for k in (1, 2, 3) if k < len(form)}

    def scanner(self) -> _Scanner:
        return _Scanner(self)

    def is_proper_prefix(self, candidate: bytes) -> bool:
        forms = self.forms
        index = bisect_left(forms, candidate)
        # Forms starting with ``candidate`` are contiguous from ``index``; the
        # first may be ``candidate`` itself, which is not a proper prefix.
        while index < len(forms) and forms[index].startswith(candidate):
            if len(forms[index]) > len(candidate):
                return True
            index += 1
        return False


class _Scanner:
    """Matchers of one :class:`_Compiled` with private scratch space."""

    def __init__(self, compiled: _Compiled) -> None:
        self.compiled = compiled
        self._matcher = compiled.matcher.clone()
        self._heads = compiled.heads.clone() if compiled.heads is not None else None

    def find(self, *parts: bytes) -> list[tuple[int, int]]:
        """Matches in the concatenation of the non-empty ``parts``."""
        nonempty = [part for part in parts if part]
        return self._matcher.find(nonempty) if nonempty else []

    def partial_len(self, window: bytes) -> int:
        """Length of the longest suffix of ``window`` that is a proper prefix of a form."""
        size = len(window)
        if self._heads is not None and size >= 4:
            for start in sorted({start for start, _ in self._heads.find([window])}):
                if self.compiled.is_proper_prefix(window[start:]):
                    return size - start
        for start in range(max(0, size - 3), size):
            if window[start:] in self.compiled.short_prefixes:
                return size - start
        return 0


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of byte ranges; touching ranges merge too, so they get one mask."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _apply_mask(data: bytes, ranges: list[tuple[int, int]], mask: bytes) -> bytes:
    parts: list[bytes] = []
    cursor = 0
    for start, end in ranges:
        parts.append(data[cursor:start])
        parts.append(mask)
        cursor = end
    parts.append(data[cursor:])
    return b"".join(parts)


# --------------------------------------------------------------------------- public API


class SecretSet:
    """Registered secrets of one job; immutable-ish; compiled matcher built once.

    Register every secret before the job starts: the matcher is compiled
    lazily on first use, and a :class:`StreamRedactor` keeps the matcher it
    was created with, so secrets added later are only seen by redactors (and
    :meth:`redact` calls) created after the addition.
    """

    def __init__(self, min_length: int = DEFAULT_MIN_SECRET_LENGTH) -> None:
        if min_length < 1:
            raise ValueError("min_length must be at least 1")
        self._min_length = min_length
        self._forms: set[bytes] = set()
        self._compiled: _Compiled | None = None

    def add(self, value: str | bytes, name: str | None = None) -> None:
        """Register ``value`` and all its :func:`secret_forms` of at least ``min_length`` bytes.

        Raises :class:`SecretTooShortError` when the value itself is shorter
        than ``min_length``: masking it would garble ordinary output and the
        mask would give the value away by where it appears.
        """
        if not isinstance(value, str | bytes | bytearray):
            raise TypeError(f"secret must be str or bytes, not {type(value).__name__}")
        if len(value) < self._min_length:
            unit = "characters" if isinstance(value, str) else "bytes"
            label = f"secret {name!r}" if name is not None else "a secret"
            raise SecretTooShortError(
                f"{label} is {len(value)} {unit}; secrets shorter than {self._min_length} {unit} "
                "cannot be masked safely"
            )
        forms = {form for form in secret_forms(value) if len(form) >= self._min_length}
        if not forms <= self._forms:
            self._forms |= forms
            self._compiled = None

    def __len__(self) -> int:
        return len(self._forms)

    def redact(self, data: bytes, mask: bytes = DEFAULT_MASK) -> bytes:
        """Mask every registered form in a whole buffer (e.g. an error message)."""
        compiled = self._compile()
        if compiled is None:
            return bytes(data)
        _check_mask(mask, compiled)
        data = bytes(data)
        # A fresh scanner has its own scratch space: concurrent calls are safe.
        return _apply_mask(data, _merge(compiled.scanner().find(data)), mask)

    def _compile(self) -> _Compiled | None:
        if self._compiled is None and self._forms:
            self._compiled = _Compiled(self._forms)
        return self._compiled


def _check_mask(mask: bytes, compiled: _Compiled | None) -> None:
    if not mask:
        # Deleting secrets could splice "SEC" + "RET" into a secret again.
        raise ValueError("mask must not be empty")
    if compiled is not None and compiled.scanner().find(bytes(mask)):
        raise ValueError("mask contains a registered secret form; choose another mask")


class StreamRedactor:
    """Redacts one job's output stream, chunk by chunk.

    Output equals ``secrets.redact(whole_stream)`` for any chunking, except
    that a stream ending inside a possible secret prefix ends with a mask:
    the bytes held back at the end are masked too.  At most
    ``longest_form - 1`` bytes are held back, and only while they could still
    be completing a secret.

    Held-back bytes are never emitted raw before later input settles them:
    there is no flush on a pause, because every held byte is the possible
    beginning of a secret (printing it would show that prefix).  Input that
    completes the secret turns them into part of one mask; input that
    diverges releases them raw, as they are then not a secret; the end of
    the stream (:meth:`flush`) masks them.

    Positions are absolute stream offsets.  State: ``_tail`` is the longest
    suffix of the input that is a proper prefix of some form, i.e. where a
    secret may still be in progress (it may include bytes already emitted
    under a mask, as context); ``_emitted`` is how far output has been
    produced; ``_mask_end`` is where the last emitted mask ended, so that a
    match continuing it does not emit a second mask.
    """

    def __init__(self, secrets: SecretSet, mask: bytes = DEFAULT_MASK) -> None:
        compiled = secrets._compile()
        _check_mask(mask, compiled)
        self._mask = bytes(mask)
        self._keep = compiled.max_len - 1 if compiled is not None else 0
        self._scanner = compiled.scanner() if compiled is not None else None
        self._reset()

    def _reset(self) -> None:
        self._tail = b""
        self._pos = 0
        self._emitted = 0
        self._mask_end = -1

    @property
    def pending(self) -> int:
        """Bytes currently held back."""
        return self._pos - self._emitted

    def feed(self, chunk: bytes) -> bytes:
        """Redact the next chunk; returns what can safely be shown now."""
        scanner = self._scanner
        if scanner is None or not chunk:
            return bytes(chunk)
        chunk = bytes(chunk)
        tail, keep = self._tail, self._keep
        old = self._pos
        new = old + len(chunk)
        tail_base = old - len(tail)
        # A match that begins in earlier input begins in ``tail``.  Matches
        # ending before ``_emitted`` were handled by an earlier call.
        done = self._emitted - tail_base
        ranges = [(tail_base + start, tail_base + end) for start, end in scanner.find(tail, chunk) if end > done]
        # A secret still being written must start in ``tail`` or this chunk.
        window = chunk[len(chunk) - keep :] if len(chunk) >= keep else (tail + chunk)[-keep:]
        partial = scanner.partial_len(window)
        hold_from = new - partial
        self._tail, self._pos = window[len(window) - partial :], new
        return self._emit(hold_from, _merge(ranges), tail, tail_base, chunk, old)

    def flush(self) -> bytes:
        """End of stream: mask what is still held back, and start afresh.

        Held bytes are the beginning of a secret that never completed, so
        they become one mask (none if the last mask already ends where they
        begin: it simply covers them too), never raw output.
        """
        held = self._scanner is not None and self._pos > self._emitted
        rest = self._mask if held and self._mask_end != self._emitted else b""
        self._reset()
        return rest

    def _emit(
        self,
        hold_from: int,
        ranges: list[tuple[int, int]],
        tail: bytes,
        tail_base: int,
        chunk: bytes,
        chunk_base: int,
    ) -> bytes:
        """Produce output from ``_emitted`` up to where bytes are final.

        Bytes before ``hold_from`` can no longer become part of a secret;
        masked bytes after it are final too, so emission runs on through a
        mask that covers ``hold_from``.  ``ranges`` are merged and sorted.
        """
        stop = max(hold_from, self._emitted)
        for start, end in ranges:
            if start > stop:
                break
            stop = max(stop, end)

        def raw(begin: int, end: int) -> bytes:
            if end <= chunk_base:
                return tail[begin - tail_base : end - tail_base]
            if begin >= chunk_base:
                return chunk[begin - chunk_base : end - chunk_base]
            return tail[begin - tail_base :] + chunk[: end - chunk_base]

        parts: list[bytes] = []
        cursor = self._emitted
        for start, end in ranges:
            if start >= stop:
                break
            if end <= cursor:
                continue
            start = max(start, cursor)
            if start > cursor:
                parts.append(raw(cursor, start))
            if start != self._mask_end:
                parts.append(self._mask)
            cursor = self._mask_end = end
        if stop > cursor:
            parts.append(raw(cursor, stop))
        self._emitted = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

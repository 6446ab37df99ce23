"""Sans-IO regex search over an HTTP response that arrives in pieces (a ``url``'s ``regex``).

Theory of operation: keepalived 2.2.7 searches a URL's ``regex`` in the
response as it is read, with PCRE2 partial matching so that a match split
over two reads is still found.  Its subject is the response from its first
byte: the first read that completes the header is searched whole (status
line, headers and the start of the body), then each further read (seen in
the IPVS VM: a ``regex_no_match`` on a word only the header held took the
real server out, and offsets count from the status line).
``regex_min_offset`` is the first offset a match may start at (the pattern
may still look behind it) and ``regex_max_offset`` the last one.  The
verdict is "matched" or "not matched"; with ``regex_no_match`` the check
passes only when not matched.  It is checked after the status code and the
``digest``.  (keepalived skips the header when a read holds it without any
body byte; here the header is always searched, so the verdict does not
depend on how the response was cut into reads.)

``RegexMatcher`` does the same with the ``regex`` package (it too has
partial matching): it is fed the response's bytes in whatever pieces they
come and decides as early as it can, so that the caller stops reading
(``done``):

* a complete match starting in the window ``[min_offset, max_offset]`` that
  ends at least ``LOOKAHEAD`` bytes before the end of what has arrived is
  final: "matched" (a match closer to the end waits for more bytes or the
  end of the response, so that a lookahead or ``$`` is not decided on a cut);
* once no match can start at or before ``max_offset`` -- the search
  position passed it, or the leftmost complete match starts after it --
  the verdict is "not matched";
* at the end of the response (``finish``) the rest is searched without partial
  matching, and what is found decides.

Only what can still matter is kept: the bytes from the leftmost possible
match start on, plus ``KEEP_BEHIND`` bytes before it for lookbehinds and
``\\b``.  A partial match that grows past ``MAX_PENDING`` bytes is dropped,
as keepalived drops one that outgrows its buffer (it logs "Regex partial match
preserve too large - discarding"): the search goes on after it.  The verdict
therefore does not depend on how the response is split into pieces, except for
a lookbehind longer than ``KEEP_BEHIND``, a lookahead longer than
``LOOKAHEAD``, or a single match longer than ``MAX_PENDING``.

``compile_regex`` turns keepalived's ``regex_options`` into flags: PCRE2's
``caseless``, ``dotall``, ``extended`` and ``multiline`` have exact
equivalents; the options that only tune PCRE2's optimiser or its UTF
handling of a byte string (``no_auto_possess``, ``no_start_optimize``,
``no_dotstar_anchor``, ``auto_callout``, ``never_utf``, ``never_ucp``,
``never_backslash_c``, ``use_offset_limit``, ``dupnames``,
``no_auto_capture``) change nothing here; the others (``ungreedy``,
``utf``, ``ucp``, ``firstline``, ``dollar_endonly``, ``allow_empty_class``,
``alt_bsux``, ``alt_circumflex``, ``alt_verbnames``,
``match_unset_backref``) have no equivalent and are reported by the parser.
No I/O happens here.
"""

from __future__ import annotations

import regex

#: Body bytes kept before the next search position (lookbehind, ``\b``).
KEEP_BEHIND = 4096
#: A match ending closer than this to the end of the bytes received waits for more.
LOOKAHEAD = 256
#: A partial match is dropped past this size (keepalived drops one outgrowing its buffer).
MAX_PENDING = 1024 * 1024

OPTION_FLAGS: dict[str, int] = {
    "caseless": regex.IGNORECASE,
    "dotall": regex.DOTALL,
    "extended": regex.VERBOSE,
    "multiline": regex.MULTILINE,
}
NO_EFFECT = frozenset(
    """no_auto_possess no_start_optimize no_dotstar_anchor auto_callout never_utf never_ucp
    never_backslash_c use_offset_limit dupnames no_auto_capture""".split()
)
NO_EQUIVALENT = frozenset(
    """ungreedy utf ucp firstline dollar_endonly allow_empty_class alt_bsux alt_circumflex
    alt_verbnames match_unset_backref""".split()
)
KNOWN_OPTIONS = frozenset(OPTION_FLAGS) | NO_EFFECT | NO_EQUIVALENT


def compile_regex(pattern: str, options: tuple[str, ...] = ()) -> regex.Pattern[bytes]:
    """The compiled byte pattern; raises ValueError with the reason if it is not valid."""
    flags = 0
    for name in options:
        flags |= OPTION_FLAGS.get(name, 0)
    try:
        return regex.compile(pattern.encode("utf-8", "surrogateescape"), flags)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc


class RegexMatcher:
    """The regex verdict over one response; see the module docstring."""

    __slots__ = ("_base", "_buf", "_end", "_pos", "discarded", "matched", "max_offset", "pattern")

    def __init__(
        self, pattern: regex.Pattern[bytes], min_offset: int = 0, max_offset: int | None = None
    ) -> None:
        self.pattern = pattern
        self.max_offset = max_offset
        self.matched: bool | None = None  # None: not known yet
        self.discarded = 0  # partial matches dropped for their size
        self._buf = bytearray()
        self._base = 0  # offset of _buf[0] in the response
        self._end = 0  # bytes fed
        self._pos = min_offset  # no match can start before this offset

    @property
    def done(self) -> bool:
        return self.matched is not None

    def feed(self, data: bytes) -> None:
        if self.matched is not None or not data:
            return
        self._buf += data
        self._end += len(data)
        self._trim()
        self._search(final=False)

    def finish(self) -> None:
        """The response ended: decide on what is left."""
        if self.matched is None:
            self._search(final=True)

    def _trim(self) -> None:
        cut = max(0, self._pos - KEEP_BEHIND) - self._base
        if cut > 0:
            del self._buf[:cut]
            self._base += cut

    def _past_window(self, pos: int) -> bool:
        return self.max_offset is not None and pos > self.max_offset

    def _search(self, final: bool) -> None:
        while self.matched is None:
            if self._past_window(self._pos):
                self.matched = False
                return
            if self._pos > self._end:  # regex_min_offset not reached yet
                if final:
                    self.matched = False
                return
            m = self.pattern.search(self._buf, self._pos - self._base, partial=not final)
            if m is None:
                if final:
                    self.matched = False
                    return
                self._pos = self._end
                self._trim()
                if self._past_window(self._pos):
                    self.matched = False
                return
            start = self._base + m.start()
            if self._past_window(start):
                self.matched = False  # the leftmost possible match is outside the window
                return
            if m.partial:
                self._pos = start
                if self._end - start > MAX_PENDING:
                    self.discarded += 1
                    self._pos = self._end  # dropped: the search goes on after it
                self._trim()
                return
            if final or self._base + m.end() + LOOKAHEAD <= self._end:
                self.matched = True
                return
            self._pos = start  # too close to the end to be sure: wait for more
            self._trim()
            return

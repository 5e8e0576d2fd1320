"""memcached's meta protocol without I/O: keys checked, requests encoded (``mg``/``ms``/``md``/``mn`` with their
flags), responses parsed into MetaResult by ResponseReader. Both clients in ``client`` speak through it.
"""

from __future__ import annotations

import base64 as _b64
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadParameter, LabkitError

MAX_KEY_LENGTH = 250
_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")  # memcached splits tokens on space; controls break lines
_SET_MODES = {
    "set": "S",
    "add": "E",
    "append": "A",
    "prepend": "P",
    "replace": "R",
    "S": "S",
    "E": "E",
    "A": "A",
    "P": "P",
    "R": "R",
}
# Tokens of a returned flag that carry integers; the rest stay strings.
_INT_FLAGS = {"c": "cas", "t": "ttl", "s": "size", "f": "client_flags", "h": "hit_before", "l": "last_access"}


class MetaError(LabkitError):
    """memcached answered ERROR / CLIENT_ERROR / SERVER_ERROR, or sent something unparseable."""


@dataclass(slots=True)
class MetaResult:
    """One meta response.

    ``status`` is the two-letter code: VA/HD (found or stored), EN (miss), NS (not stored),
    EX (CAS mismatch), NF (not found). ``win`` is the W flag (this client must recompute),
    ``lease_taken`` the Z flag (another client already won), ``stale`` the X flag.
    """

    status: str
    hit: bool = False
    value: bytes | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    win: bool = False
    stale: bool = False
    lease_taken: bool = False
    cas: int | None = None
    ttl: int | None = None

    @property
    def ok(self) -> bool:
        """True when the command did what it was asked (stored, deleted, found)."""
        return self.status in ("HD", "VA", "MN")

    stored = ok


def validate_key(key: str | bytes, *, binary: bool = False) -> bytes:
    """Return the key as wire bytes, or raise BadParameter saying how to fix it.

    With ``binary=True`` any bytes are allowed: the key is sent base64-encoded with the ``b`` flag.
    """
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if binary:
        if not raw:
            raise BadParameter("memcached key is empty: pass a non-empty key")
        raw = _b64.b64encode(raw)
        if len(raw) > MAX_KEY_LENGTH:
            raise BadParameter(
                f"memcached key is {len(raw)} bytes once base64-encoded (max "
                f"{MAX_KEY_LENGTH}): use a shorter key or hash it (e.g. sha1 hex)"
            )
        return raw
    if not raw:
        raise BadParameter("memcached key is empty: pass a non-empty key")
    if len(raw) > MAX_KEY_LENGTH:
        raise BadParameter(
            f"memcached key is {len(raw)} bytes (max {MAX_KEY_LENGTH}): use a shorter "
            "key or hash it (e.g. hashlib.sha1(key).hexdigest())"
        )
    if _BAD_KEY_BYTE.search(raw):
        raise BadParameter(
            f"memcached key {raw[:40]!r} contains a space or control character: "
            "remove it, or pass binary=True to send the key base64-encoded"
        )
    return raw


def _ttl_token(name: str, ttl: int | None) -> int | None:
    if ttl is None:
        return None
    if not isinstance(ttl, int) or ttl < -1:
        raise BadParameter(
            f"{name}={ttl!r}: a TTL is an integer number of seconds >= -1 (0 = never expires, -1 = expire now)"
        )
    return ttl


def _line(cmd: str, key: bytes, parts: list[str], datalen: int | None = None) -> bytes:
    head = [cmd.encode(), key]
    if datalen is not None:
        head.append(str(datalen).encode())
    head.extend(p.encode() for p in parts)
    return b" ".join(head) + b"\r\n"


def encode_get(
    key: str | bytes,
    *,
    value: bool = True,
    cas: bool = False,
    ttl: bool = False,
    size: bool = False,
    return_key: bool = False,
    client_flags: bool = False,
    vivify: int | None = None,
    recache: int | None = None,
    touch: int | None = None,
    no_bump: bool = False,
    quiet: bool = False,
    opaque: str | None = None,
    binary: bool = False,
) -> bytes:
    """Build an ``mg`` request. vivify=N<ttl> (lease on miss), recache=R<ttl>, touch=T<ttl>."""
    k = validate_key(key, binary=binary)
    return (
        b"mg "
        + k
        + _get_flags(
            value, cas, ttl, size, return_key, client_flags, vivify, recache, touch, no_bump, quiet, opaque, binary
        )
    )


@functools.lru_cache(maxsize=1024)
def _get_flags(
    value: bool,
    cas: bool,
    ttl: bool,
    size: bool,
    return_key: bool,
    client_flags: bool,
    vivify: int | None,
    recache: int | None,
    touch: int | None,
    no_bump: bool,
    quiet: bool,
    opaque: str | None,
    binary: bool,
) -> bytes:
    # cached: a load run asks for the same few flag sets millions of times
    parts: list[str] = []
    if binary:
        parts.append("b")
    for on, flag in (
        (cas, "c"),
        (ttl, "t"),
        (size, "s"),
        (return_key, "k"),
        (client_flags, "f"),
        (no_bump, "u"),
        (quiet, "q"),
    ):
        if on:
            parts.append(flag)
    for name, tok, flag in (("vivify", vivify, "N"), ("recache", recache, "R"), ("touch", touch, "T")):
        t = _ttl_token(name, tok)
        if t is not None:
            parts.append(f"{flag}{t}")
    if opaque is not None:
        parts.append(f"O{opaque}")
    if value:
        parts.append("v")
    return ("".join(" " + p for p in parts) + "\r\n").encode()


def encode_set(
    key: str | bytes,
    value: bytes | str,
    *,
    ttl: int = 0,
    cas: int | None = None,
    invalidate: bool = False,
    mode: str = "set",
    client_flags: int | None = None,
    return_cas: bool = False,
    quiet: bool = False,
    opaque: str | None = None,
    binary: bool = False,
) -> bytes:
    """Build an ``ms`` request. cas=C<token> compare-and-set; invalidate=I (with cas: stale-if-older)."""
    k = validate_key(key, binary=binary)
    data = value.encode() if isinstance(value, str) else bytes(value)
    if mode not in _SET_MODES:
        raise BadParameter(f"ms mode={mode!r} is unknown: use one of set, add, replace, append, prepend")
    parts: list[str] = ["b"] if binary else []
    parts.append(f"T{_ttl_token('ttl', ttl)}")
    if cas is not None:
        parts.append(f"C{int(cas)}")
    if invalidate:
        parts.append("I")
    if _SET_MODES[mode] != "S":
        parts.append(f"M{_SET_MODES[mode]}")
    if client_flags is not None:
        parts.append(f"F{int(client_flags)}")
    if return_cas:
        parts.append("c")
    if quiet:
        parts.append("q")
    if opaque is not None:
        parts.append(f"O{opaque}")
    return _line("ms", k, parts, len(data)) + data + b"\r\n"


def encode_delete(
    key: str | bytes,
    *,
    invalidate: bool = False,
    ttl: int | None = None,
    cas: int | None = None,
    quiet: bool = False,
    opaque: str | None = None,
    binary: bool = False,
) -> bytes:
    """Build an ``md`` request. invalidate=I marks the item stale (next mg sees X); ttl=T with I."""
    k = validate_key(key, binary=binary)
    if ttl is not None and not invalidate:
        raise BadParameter("md ttl= only applies with invalidate=True (memcached ignores T otherwise)")
    parts: list[str] = ["b"] if binary else []
    if invalidate:
        parts.append("I")
    t = _ttl_token("ttl", ttl)
    if t is not None:
        parts.append(f"T{t}")
    if cas is not None:
        parts.append(f"C{int(cas)}")
    if quiet:
        parts.append("q")
    if opaque is not None:
        parts.append(f"O{opaque}")
    return _line("md", k, parts)


def encode_noop() -> bytes:
    """Build an ``mn`` request; memcached answers MN after everything sent before it."""
    return b"mn\r\n"


def _as_get(res: MetaResult | None) -> MetaResult:
    """Interpret a reply to ``mg``: set ``hit``.

    A hit is a usable value: found (VA, or HD when no value was asked), and not the empty stub that
    N (vivify) creates on a miss. A stale item (X) is still a hit: serving it while one client
    recaches is the point of serve-stale.
    """
    if res is None:  # quiet miss: memcached sent nothing
        return MetaResult(status="EN")
    found = res.status in ("VA", "HD")
    res.hit = found and (res.stale or not (res.win or res.lease_taken))
    return res


def _result(status: str, tokens: list[bytes], value: bytes | None) -> MetaResult:
    if not tokens:  # the common case under load: no flags asked, none returned
        return MetaResult(status=status, value=value)
    flags: dict[str, Any] = {}
    for tok in tokens:
        name, rest = chr(tok[0]), tok[1:].decode(errors="replace")
        if name in _INT_FLAGS and rest.lstrip("-").isdigit():
            flags[name] = int(rest)
        else:
            flags[name] = rest if rest else True
    win, stale, taken = "W" in flags, "X" in flags, "Z" in flags
    return MetaResult(
        status=status,
        value=value,
        flags=flags,
        win=win,
        stale=stale,
        lease_taken=taken,
        cas=flags.get("c"),
        ttl=flags.get("t"),
    )


class ResponseReader:
    """Incremental parser: feed bytes, take complete responses.

    Returns MetaResult for meta codes, ("STAT", dict) blocks for ``stats``, ("VERSION", str).
    Errors from the server become MetaError instances (returned, so the caller raises in context).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # parsed up to here; compacted lazily (deleting per reply would copy the rest)
        self._stats: dict[str, str] | None = None

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> Any | None:
        """The next complete response, or None when more bytes are needed."""
        buf = self._buf
        while True:
            pos = self._pos
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            line = bytes(buf[pos:end])
            parts = line.split()
            code = parts[0].decode(errors="replace") if parts else ""
            if code == "VA":
                size = int(parts[1])
                need = end + 2 + size + 2
                if len(buf) < need:
                    return None
                value = bytes(buf[end + 2 : end + 2 + size])
                self._pos = need
                return _result("VA", parts[2:], value)
            self._pos = end + 2
            if self._stats is not None:
                if code == "STAT":
                    self._stats[parts[1].decode()] = b" ".join(parts[2:]).decode(errors="replace")
                    continue
                if code == "END":
                    out, self._stats = self._stats, None
                    return ("STAT", out)
            if code == "STAT":
                self._stats = {parts[1].decode(): b" ".join(parts[2:]).decode(errors="replace")}
                continue
            if code == "END":  # 'stats' with nothing to report
                return ("STAT", {})
            if code in ("HD", "EN", "NS", "EX", "NF", "MN"):
                return _result(code, parts[1:], None)
            if code == "VERSION":
                return ("VERSION", line[8:].decode().strip())
            if code in ("ERROR", "CLIENT_ERROR", "SERVER_ERROR"):
                return MetaError(
                    f"memcached answered {line.decode(errors='replace')!r}: check the "
                    "command's flags and key (see memcached doc/protocol.txt, Meta Commands)"
                )
            return MetaError(f"unexpected line from memcached: {line[:80]!r}")

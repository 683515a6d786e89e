"""Access control, pure (no web framework): tokens with scopes, the token file, the
Host and Origin allow-lists and the rule that refuses a network bind without tokens.

Token file format (one token per line; lines starting with `#` and blank lines are
skipped):

    # id        scopes                    token
    robot-1     view,control              2mQ9k...at-least-16-characters
    ops         admin,view,control        Zr81...
    prometheus  metrics                   b7Tq...
    laptop      *                         kP0x...

Ids name a token in logs (the secret itself never is logged or echoed); `*` means every
scope. Secrets are compared as SHA-256 digests with `hmac.compare_digest`, so neither
the comparison time nor a stored secret's length tells an attacker anything.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Scope = Literal["view", "control", "admin", "metrics"]
SCOPES: Final[tuple[Scope, ...]] = ("view", "control", "admin", "metrics")
ALL_SCOPES: Final[frozenset[str]] = frozenset(SCOPES)
MIN_SECRET_CHARS = 16
LOOPBACK_NAMES: Final[frozenset[str]] = frozenset({"127.0.0.1", "localhost", "::1"})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SECRET = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces


class AuthConfigError(ValueError):
    """The token configuration cannot be used (unreadable file, bad token); start-up
    refuses rather than running with fewer tokens than the operator meant."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a token's id and scopes (never the secret)."""

    token_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    digest: bytes = field(repr=False)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def parse_scopes(text: str) -> frozenset[str]:
    """`view,control` -> the scopes; `*` is all of them; unknown names are an error."""
    names = {s.strip().lower() for s in text.split(",") if s.strip()}
    if "*" in names or "all" in names:
        return ALL_SCOPES
    if not names or names - ALL_SCOPES:
        # The names are not echoed: a line with its columns swapped would print a token.
        raise AuthConfigError(
            f"unknown scope name; scopes are a comma-separated list of {', '.join(SCOPES)}, "
            "or *"
        )
    return frozenset(names)


def check_secret(secret: str, where: str) -> None:
    """Refuse secrets short enough to guess; the message never contains the secret."""
    if len(secret) < MIN_SECRET_CHARS or not _SECRET.match(secret):
        raise AuthConfigError(
            f"{where}: a token must be at least {MIN_SECRET_CHARS} printable characters "
            "without spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def parse_token_file(
    text: str, source: str = "token file"
) -> list[tuple[str, frozenset[str], str]]:
    """(id, scopes, secret) per line. Errors name the line number, never its content."""
    out: list[tuple[str, frozenset[str], str]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source} line {number}"
        if len(parts) != 3:
            raise AuthConfigError(f"{where}: expected `<id> <scopes> <token>`")
        token_id, scopes, secret = parts
        if not _ID.match(token_id):
            raise AuthConfigError(f"{where}: the id must be 1-64 of A-Z a-z 0-9 . _ -")
        if token_id in seen:
            raise AuthConfigError(f"{where}: id {token_id!r} is used twice")
        check_secret(secret, where)
        try:
            scope_set = parse_scopes(scopes)
        except AuthConfigError as exc:
            raise AuthConfigError(f"{where}: {exc}") from None
        seen.add(token_id)
        out.append((token_id, scope_set, secret))
    return out


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenStore:
    """The tokens the server accepts: the `token` setting (id `env`, all scopes), the
    token file (re-read when it changes) or, with neither, one generated at start-up.

    Lookups run on the event loop and only read `self._entries`; a reload builds a new
    tuple and swaps it in with one assignment, so no lock is needed."""

    def __init__(
        self,
        token: str | None = None,
        token_file: str | None = None,
        *,
        disabled: bool = False,
    ) -> None:
        self.token_file = token_file
        self.disabled = disabled
        self.generated: str | None = None  # the secret, only to print the start-up URL
        self._static: tuple[_Entry, ...] = ()
        self._from_file: tuple[_Entry, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        if token:
            check_secret(token, "STREAMSEG_TOKEN")
            self._static = (_Entry(Principal("env", ALL_SCOPES), _digest(token)),)
        if token_file:
            self._signature = _file_signature(token_file)
            if self._signature is None:
                raise AuthConfigError(f"token file {token_file!r} cannot be read")
            self._from_file = self._read_file(token_file)
        if not token and not token_file and not disabled:
            self.generated = secrets.token_urlsafe(32)
            self._static = (_Entry(Principal("generated", ALL_SCOPES), _digest(self.generated)),)

    @property
    def configured(self) -> bool:
        """Tokens were given by the operator (not generated, not disabled)."""
        return self.generated is None and not self.disabled

    @property
    def token_ids(self) -> list[str]:
        return [e.principal.token_id for e in (*self._static, *self._from_file)]

    def lookup(self, secret: str | None) -> Principal | None:
        """The principal of a presented secret, or None. Every entry is compared, in
        constant time each, so the position of a match is not observable either."""
        if self.disabled:
            return Principal("anonymous", ALL_SCOPES)
        if not secret:
            return None
        presented = _digest(secret)
        found: Principal | None = None
        for entry in (*self._static, *self._from_file):
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        return found

    def reload_if_changed(self) -> bool:
        """Re-read the token file when its mtime, size or inode changed (blocking: run
        it in a thread). A file that vanishes or breaks revokes its tokens; the error
        is logged without any line's content. True when the tokens changed."""
        path = self.token_file
        if path is None:
            return False
        signature = _file_signature(path)
        if signature == self._signature:
            return False
        return self._reload(path, signature)

    def reload(self) -> bool:
        """Re-read the token file now (SIGHUP)."""
        if self.token_file is None:
            return False
        return self._reload(self.token_file, _file_signature(self.token_file))

    def _reload(self, path: str, signature: tuple[int, int, int] | None) -> bool:
        self._signature = signature
        try:
            entries = self._read_file(path)
        except (AuthConfigError, OSError) as exc:
            log.error("token file reload failed, its tokens are revoked until fixed: %s", exc)
            entries = ()
        before = [e.principal for e in self._from_file]
        self._from_file = entries
        log.info("token file reloaded: ids %s", [e.principal.token_id for e in entries])
        return before != [e.principal for e in entries]

    @staticmethod
    def _read_file(path: str) -> tuple[_Entry, ...]:
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = type(exc).__name__
            raise AuthConfigError(f"token file {path!r} cannot be read: {reason}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %r is readable by other users; chmod 600 it", path)
        rows = parse_token_file(text, f"token file {path!r}")
        return tuple(_Entry(Principal(i, s), _digest(secret)) for i, s, secret in rows)


# ---- binding, Host and Origin ----------------------------------------------------------


def is_loopback(host: str) -> bool:
    """A bind address or Host name that only this machine can reach."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, store: TokenStore) -> str | None:
    """Why the server must not start on `host` with these tokens, or None."""
    if is_loopback(host) or store.configured or store.disabled:
        return None
    return (
        f"refusing to listen on {host!r} (beyond loopback) with a generated token: "
        "configure tokens (STREAMSEG_TOKEN or --token-file, see docs/SECURITY.md), or pass "
        "--insecure-no-auth-on-network to let anyone who reaches the port use everything"
    )


def split_host_header(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` -> (lowercased name without brackets, port), or
    None when malformed."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if port_text and not port_text.isdigit():
        return None
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        return None
    name = name.lower().rstrip(".")
    if not name or any(c in name for c in "/\\@ \t\r\n"):
        return None
    return name, port


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which Host and Origin values a request may carry. Loopback names are always
    allowed (with any port); `*` in `hosts` turns the Host check off."""

    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def build(cls, bind_host: str, hosts: Iterable[str], origins: Iterable[str]) -> HostPolicy:
        allowed = set(LOOPBACK_NAMES)
        allowed.update(h.strip().strip("[]").lower().rstrip(".") for h in hosts if h.strip())
        bind = bind_host.strip("[]").lower()
        if bind and bind not in ("0.0.0.0", "::"):
            allowed.add(bind)  # a specific address the operator chose to listen on
        return cls(frozenset(allowed), frozenset(normalise_origin(o) for o in origins if o))

    def host_allowed(self, host_header: str | None) -> bool:
        if "*" in self.hosts:
            return True
        parsed = split_host_header(host_header or "")
        return parsed is not None and parsed[0] in self.hosts

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Configured origins, or the same origin as the (allowed) Host."""
        normalised = normalise_origin(origin)
        if normalised in self.origins or "*" in self.origins:
            return True
        return same_origin(origin, host_header)


def normalise_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def same_origin(origin: str, host_header: str | None) -> bool:
    """The Origin names the host and port the request was sent to (`null`, another
    scheme or a path are not same-origin)."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return False
    host = split_host_header(host_header or "")
    if host is None:
        return False
    return parts.hostname.lower().rstrip(".") == host[0] and origin_port == host[1]


def headers_of(scope_headers: Iterable[tuple[bytes, bytes]]) -> Mapping[str, str]:
    """ASGI header pairs as a dict of the *first* value per lowercased name."""
    out: dict[str, str] = {}
    for name, value in scope_headers:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out

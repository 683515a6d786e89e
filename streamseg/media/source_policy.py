"""What a camera source may be, decided before anything reaches FFmpeg (pure, sans-I/O).

FFmpeg opens whatever it is given: local files (its `tty` demuxer renders text files as
video), any host and port, redirects anywhere, TLS without verification. So a source URL
from a client is checked here first, and FFmpeg itself is fenced in per scheme:

- schemes from an allow-list (rtsp, rtsps, http, https by default); no control or
  whitespace characters (CR/LF in an RTSP URL reach the camera as request lines);
- file sources only when a media root is configured, and only regular files under it
  after resolving symlinks; every refusal reads the same, so it is no existence oracle;
- V4L2 devices only when named in the configuration;
- every address a host name resolves to must pass the host policy: link-local and cloud
  metadata addresses are denied, loopback only when allowed, private ranges allowed by
  default (that is where cameras live);
- `protocol_whitelist`/`format_whitelist` per scheme (no `tty`, no image demuxers unless
  allowed), no HTTP redirects, TLS verified for https/rtsps unless a stream opts out;
- failures reported as one of a fixed set of reasons with our own text: FFmpeg's
  messages carry the full URL, credentials included.

The I/O (DNS, resolving paths) lives in `media/sources.py`; the functions here take its
results as arguments so every rule is testable with plain values.
"""

from __future__ import annotations

import errno
import ipaddress
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import av.error

SourceKind = Literal["rtsp", "http", "file", "v4l2"]
Transport = Literal["tcp", "udp"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
# Demuxers a camera or a video file needs (FFmpeg matches any name of a demuxer, so
# "mov" admits "mov,mp4,m4a,3gp,3g2,mj2" and "matroska" admits webm).
VIDEO_FORMATS = (
    "mpegts",
    "mpjpeg",
    "h264",
    "hevc",
    "mov",
    "matroska",
    "flv",
    "avi",
    "ivf",
    "yuv4mpegpipe",
)
# Still images and raw JPEG: a "camera" that is one picture; only when allowed.
IMAGE_FORMATS = (
    "image2",
    "mjpeg",
    "jpeg_pipe",
    "png_pipe",
    "webp_pipe",
    "bmp_pipe",
    "gif",
    "tiff_pipe",
)
PROTOCOLS: dict[str, str] = {
    "rtsp": "tcp,udp,rtp",
    "rtsps": "tcp,tls,udp,rtp",
    "http": "http,tcp",
    "https": "https,tls,tcp",
    "file": "file",
}
# Never allowed, whatever the lists say: instance metadata services (AWS, GCP, Azure,
# OpenStack, Alibaba, AWS ECS, AWS IPv6).
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "169.254.170.2/32", "100.100.100.200/32", "fd00:ec2::254/128")
)
LINK_LOCAL_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
# 0.0.0.0 and :: reach the local host on Linux: they count as loopback.
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("::/128"),
)
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
QUERY_SECRETS = ("pass", "pwd", "pw", "token", "secret", "key", "auth", "sig", "credential")
# `name=value` pieces of a path (`/user=admin&password=x&channel=1`, `;pwd=x`), a common
# camera URL form that carries credentials outside the query.
_PATH_PAIR = re.compile(r"(?P<key>[^/;&?=]+)=(?P<value>[^/;&?]*)")
# The user part of a URL nested in another's path or query (`?next=rtsp://u:pw@cam/`).
_NESTED_USERINFO = re.compile(r"(?<=//)[^/?#@\s]+@")


class Reason(StrEnum):
    """Why a source was refused or failed: a fixed vocabulary for the API and logs."""

    BAD_URL = "bad_url"  # malformed, control characters
    UNSUPPORTED = "unsupported"  # scheme, demuxer, codec or protocol not allowed/known
    FORBIDDEN = "forbidden"  # refused by the source policy
    UNREACHABLE = "unreachable"  # name does not resolve, no route, connection lost
    REFUSED = "refused"  # the port is closed
    TIMEOUT = "timeout"  # nothing within the open/read timeout
    AUTH_FAILED = "auth_failed"  # 401/403 or an RTSP authentication failure
    NOT_FOUND = "not_found"  # 404
    REJECTED = "rejected"  # another 4xx
    SERVER_ERROR = "server_error"  # 5xx
    TLS = "tls"  # certificate not trusted or for another name
    REDIRECT = "redirect"  # redirects are not followed
    INVALID_DATA = "invalid_data"  # the bytes are not a video we can decode
    TOO_LARGE = "too_large"  # frame beyond max_frame_side
    ENDED = "ended"  # the server closed the stream
    ERROR = "error"  # anything else


REASON_TEXT: dict[Reason, str] = {
    Reason.BAD_URL: "the URL is malformed",
    Reason.UNSUPPORTED: "the source's format, codec or protocol is not supported or not allowed",
    Reason.FORBIDDEN: "the source policy does not allow this source",
    Reason.UNREACHABLE: "the source cannot be reached",
    Reason.REFUSED: "the source refused the connection",
    Reason.TIMEOUT: "nothing from the source within the timeout",
    Reason.AUTH_FAILED: "the source refused the credentials",
    Reason.NOT_FOUND: "the source has no such stream",
    Reason.REJECTED: "the source rejected the request",
    Reason.SERVER_ERROR: "the source answered with a server error",
    Reason.TLS: "the source's TLS certificate is not trusted for its host name",
    Reason.REDIRECT: "the source redirected elsewhere; redirects are not followed",
    Reason.INVALID_DATA: "the source sent data that is not a readable video",
    Reason.TOO_LARGE: "the source's frames are larger than allowed",
    Reason.ENDED: "the stream ended (the server closed the connection)",
    Reason.ERROR: "the source failed",
}


class SourceError(ValueError):
    """A source that cannot be used as given; `reason` is one of `Reason`, the text is
    ours (never FFmpeg's, never the URL)."""

    def __init__(self, message: str, reason: Reason = Reason.BAD_URL) -> None:
        super().__init__(message)
        self.reason = reason


FILE_REFUSED = "file sources are limited to readable video files under the media root"
FILES_DISABLED = "file sources are disabled (set a media root to allow them)"
DEVICE_REFUSED = "this device is not one of the configured video devices"


@dataclass(frozen=True, slots=True)
class HostRule:
    """One allow/deny entry: a network (CIDR or single address) or a host name
    (`cam.example` exactly, `*.example` for its subdomains)."""

    network: IPNetwork | None = None
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> HostRule:
        text = text.strip().lower()
        try:
            return cls(network=ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            if not text or any(c in text for c in "/@:"):
                raise ValueError(f"not a host name or CIDR: {text!r}") from None
            return cls(name=text)

    def matches_name(self, host: str) -> bool:
        if self.name is None:
            return False
        host = host.lower().rstrip(".")
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def matches_address(self, address: IPAddress) -> bool:
        return self.network is not None and address in self.network


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What sources are allowed. The default is safe on a shared network: network
    cameras on private or public addresses, no files, no devices, no loopback."""

    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    media_root: str | None = None  # file sources on, confined here
    devices: tuple[str, ...] = ()
    allow_hosts: tuple[HostRule, ...] = ()  # non-empty: only these
    deny_hosts: tuple[HostRule, ...] = ()
    allow_loopback: bool = False
    allow_private: bool = True
    allow_public: bool = True
    formats: tuple[str, ...] = VIDEO_FORMATS
    allow_images: bool = False
    ca_file: str | None = None
    max_frame_side: int = 4096

    @property
    def demuxers(self) -> tuple[str, ...]:
        return self.formats + (IMAGE_FORMATS if self.allow_images else ())


@lru_cache(maxsize=8)
def policy_from_settings(settings: object) -> SourcePolicy:
    """The policy a server's settings describe (`source_*` fields of `config.Settings`)."""
    get = settings.__getattribute__
    formats = tuple(get("source_formats")) or VIDEO_FORMATS
    return SourcePolicy(
        schemes=tuple(s.lower() for s in get("source_schemes")),
        media_root=get("source_media_root") or None,
        devices=tuple(get("source_devices")),
        allow_hosts=tuple(HostRule.parse(h) for h in get("source_allow_hosts")),
        deny_hosts=tuple(HostRule.parse(h) for h in get("source_deny_hosts")),
        allow_loopback=bool(get("source_allow_loopback")),
        allow_private=bool(get("source_allow_private")),
        allow_public=bool(get("source_allow_public")),
        formats=formats,
        allow_images=bool(get("source_allow_images")),
        ca_file=get("source_ca_file") or None,
        max_frame_side=int(get("max_frame_side")),
    )


# ---- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedSource:
    """A URL taken apart and checked as far as it can be without I/O."""

    url: str
    kind: SourceKind
    scheme: str  # rtsp, rtsps, http, https, file, v4l2
    target: str  # what FFmpeg opens: the URL without our own parameters, or a path
    host: str | None = None
    port: int | None = None
    transport: Transport | None = None  # from `?transport=` (RTSP)

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "rtsps")


def control_characters(text: str) -> list[str]:
    """Control characters in `text` (C0, DEL, C1, line/paragraph separators)."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def safe_text(text: str) -> str:
    """`text` with control characters escaped, for logs (a CR/LF is never a new line)."""
    if not control_characters(text):
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if control_characters(c) else c for c in text
    )


def redact(url: str) -> str:
    """The URL without its password or secret-looking query values, for logs and the
    API; control characters escaped."""
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if password is not None or parts.username:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        # A user name alone may be the secret (`rtsp://TOKEN@host/`).
        user = f"{parts.username}:***" if password is not None else "***"
        netloc = f"{user}@{host}" + (f":{port}" if port else "")
        parts = parts._replace(netloc=netloc)
    if "=" in parts.path:
        parts = parts._replace(path=_PATH_PAIR.sub(_hide_secret_pair, parts.path))
    if "@" in parts.path:
        parts = parts._replace(path=_NESTED_USERINFO.sub("***@", parts.path))
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        hidden = [
            (_hide_nested(k), "***" if _secret_key(k) else _hide_nested(v)) for k, v in query
        ]
        if hidden != query:
            parts = parts._replace(query=urlencode(hidden, safe="*"))
    return safe_text(urlunsplit(parts))


def _hide_nested(text: str) -> str:
    return _NESTED_USERINFO.sub("***@", text) if "@" in text else text


def _hide_secret_pair(match: re.Match[str]) -> str:
    key = match.group("key")
    return f"{key}=***" if _secret_key(key) else match.group(0)


def _secret_key(key: str) -> bool:
    key = key.lower()
    return any(s in key for s in QUERY_SECRETS)


def transport_in_url(url: str) -> tuple[str, Transport | None]:
    """Split `?transport=tcp|udp` off an RTSP URL: it is ours, not the camera's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in query if k == "transport"]
    if not ours:
        return url, None
    if ours[-1] not in ("tcp", "udp"):
        raise SourceError(f"transport must be tcp or udp, got {safe_text(ours[-1])!r}")
    rest = urlencode([(k, v) for k, v in query if k != "transport"])
    transport: Transport = "udp" if ours[-1] == "udp" else "tcp"
    return urlunsplit(parts._replace(query=rest)), transport


def parse_source(url: str, policy: SourcePolicy) -> ParsedSource:
    """Everything that can be decided from the text alone; raises SourceError."""
    if control_characters(url):
        raise SourceError("control characters are not allowed in a source URL")
    if url.startswith("/dev/"):
        if url not in policy.devices:
            raise SourceError(DEVICE_REFUSED, Reason.FORBIDDEN)
        return ParsedSource(url, "v4l2", "v4l2", url)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or len(scheme) == 1:  # a path (or a Windows drive)
            return _parse_file(url, parts.netloc, parts.path, scheme, policy)
        if scheme not in DEFAULT_PORTS or scheme not in policy.schemes:
            allowed = ", ".join(f"{s}://" for s in policy.schemes)
            raise SourceError(
                f"unsupported URL scheme {safe_text(scheme)!r}; allowed: {allowed}",
                Reason.UNSUPPORTED,
            )
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError("the URL is malformed (host or port)") from None
    if not host:
        raise SourceError("the URL has no host")
    if any(c.isspace() for c in url):
        raise SourceError("spaces must be percent-encoded in a URL")
    target, transport = url, None
    if scheme.startswith("rtsp"):
        target, transport = transport_in_url(url)
    kind: SourceKind = "rtsp" if scheme.startswith("rtsp") else "http"
    return ParsedSource(
        url, kind, scheme, target, host.lower(), port or DEFAULT_PORTS[scheme], transport
    )


def _parse_file(
    url: str, netloc: str, path: str, scheme: str, policy: SourcePolicy
) -> ParsedSource:
    if policy.media_root is None:
        raise SourceError(FILES_DISABLED, Reason.FORBIDDEN)
    if scheme == "file":
        if netloc not in ("", "localhost"):
            raise SourceError(FILE_REFUSED, Reason.FORBIDDEN)
        path = unquote(path)
    else:
        path = url
    if "\x00" in path or not path:
        raise SourceError(FILE_REFUSED, Reason.FORBIDDEN)
    joined = posixpath.join(policy.media_root, path)  # relative: under the root
    return ParsedSource(url, "file", "file", posixpath.normpath(joined))


# ---- checks on what the I/O layer found -----------------------------------------------


def check_file(root_real: str, path_real: str | None, regular_readable: bool) -> str:
    """The path FFmpeg may open (`file:` + the resolved path, so no name is read as a
    protocol), or the one refusal for every failure: missing, not a regular file,
    unreadable, outside the root, escaping it through a symlink."""
    if path_real is None or not regular_readable:
        raise SourceError(FILE_REFUSED, Reason.FORBIDDEN)
    root = posixpath.normpath(root_real)
    inside = posixpath.commonpath([root, path_real]) == root and path_real != root
    if not inside:
        raise SourceError(FILE_REFUSED, Reason.FORBIDDEN)
    return "file:" + path_real


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def address_refusal(address: IPAddress, host: str, policy: SourcePolicy) -> str | None:
    """Why this address may not be connected to for `host`, or None when it may."""
    if _within(address, METADATA_NETWORKS):
        return "cloud metadata addresses are never allowed"
    if any(r.matches_address(address) or r.matches_name(host) for r in policy.deny_hosts):
        return "the host is on the deny list"
    if any(r.matches_address(address) or r.matches_name(host) for r in policy.allow_hosts):
        return None  # named explicitly by the operator
    if policy.allow_hosts:
        return "the host is not on the allow list"
    if _within(address, LINK_LOCAL_NETWORKS):
        return "link-local addresses are not allowed"
    if _within(address, LOOPBACK_NETWORKS):
        return None if policy.allow_loopback else "loopback addresses are not allowed"
    if _within(address, PRIVATE_NETWORKS):
        return None if policy.allow_private else "private addresses are not allowed"
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return "multicast and reserved addresses are not allowed"
    return None if policy.allow_public else "public addresses are not allowed"


def check_addresses(host: str, addresses: Iterable[str], policy: SourcePolicy) -> None:
    """Every address the host resolved to must be allowed (a name that resolves to a
    camera and to 169.254.169.254 is refused), and there must be at least one."""
    found = list(addresses)
    if not found:
        raise SourceError(REASON_TEXT[Reason.UNREACHABLE], Reason.UNREACHABLE)
    for text in found:
        try:
            address = _address(text)
        except ValueError:
            raise SourceError("the host resolved to an unusable address", Reason.FORBIDDEN) from (
                None
            )
        why = address_refusal(address, host, policy)
        if why is not None:
            raise SourceError(f"{REASON_TEXT[Reason.FORBIDDEN]}: {why}", Reason.FORBIDDEN)


# ---- FFmpeg options --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenSpec:
    """How FFmpeg opens a checked source: its URL and the options fencing it in."""

    url: str
    options: dict[str, str] = field(default_factory=dict)
    format: str | None = None


def ffmpeg_open_spec(
    parsed: ParsedSource,
    target: str,
    policy: SourcePolicy,
    *,
    transport: Transport,
    tls_verify: bool,
    ca_file: str | None,
) -> OpenSpec:
    """The URL and `av.open` options for a checked source. `max_pixels` makes the probe
    and decoder refuse a frame larger than allowed before allocating it."""
    side = policy.max_frame_side
    options = {"max_pixels": str(side * side)}
    if parsed.kind == "v4l2":
        return OpenSpec(target, options, format="v4l2")
    options["protocol_whitelist"] = PROTOCOLS[parsed.scheme]
    if parsed.kind == "rtsp":
        options["format_whitelist"] = "rtsp"
        options["rtsp_transport"] = transport
    else:
        options["format_whitelist"] = ",".join(policy.demuxers)
    if parsed.kind in ("rtsp", "http"):
        options["fpsprobesize"] = "0"  # the rate is not needed: opens 0.9 s -> 0.3 s
    if parsed.kind == "http":
        options["max_redirects"] = "0"  # no redirect to another host or scheme
    if parsed.tls:
        options["tls_verify"] = "1" if tls_verify else "0"
        if tls_verify and ca_file:
            options["ca_file"] = ca_file
    return OpenSpec(target, options)


# ---- errors ----------------------------------------------------------------------------

_ERRNO_REASONS = {
    errno.ECONNREFUSED: Reason.REFUSED,
    errno.ETIMEDOUT: Reason.TIMEOUT,
    errno.EHOSTUNREACH: Reason.UNREACHABLE,
    errno.ENETUNREACH: Reason.UNREACHABLE,
    errno.ECONNRESET: Reason.UNREACHABLE,
    errno.EPIPE: Reason.UNREACHABLE,
    errno.EIO: Reason.UNREACHABLE,
    errno.EACCES: Reason.AUTH_FAILED,
    errno.EPERM: Reason.AUTH_FAILED,
    errno.ENOENT: Reason.NOT_FOUND,
    errno.EINVAL: Reason.UNSUPPORTED,  # not on a whitelist, or an option refused
    errno.ENOSYS: Reason.UNSUPPORTED,
}


def reason_for(exc: BaseException, *, timed_out: bool = False) -> Reason:
    """The reason for an exception from opening or reading a source (FFmpeg's own
    message is never used: it carries the URL with its credentials)."""
    if timed_out or isinstance(exc, av.error.ExitError | TimeoutError):
        return Reason.TIMEOUT
    if isinstance(exc, SourceError):
        return exc.reason
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        return Reason.AUTH_FAILED
    if isinstance(exc, av.error.HTTPNotFoundError):
        return Reason.NOT_FOUND
    if isinstance(exc, av.error.HTTPServerError):
        return Reason.SERVER_ERROR
    if isinstance(exc, av.error.HTTPClientError | av.error.HTTPError):
        return Reason.REJECTED
    if isinstance(exc, av.error.InvalidDataError):
        return Reason.INVALID_DATA
    if isinstance(
        exc,
        av.error.LookupError | av.error.PatchWelcomeError | av.error.NotImplementedError,
    ):
        return Reason.UNSUPPORTED
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in _ERRNO_REASONS:
        return _ERRNO_REASONS[code]
    return Reason.ERROR


# Reasons that retrying soon will not fix (the camera may be reconfigured meanwhile).
LASTING_REASONS = frozenset(
    {
        Reason.BAD_URL,
        Reason.UNSUPPORTED,
        Reason.FORBIDDEN,
        Reason.AUTH_FAILED,
        Reason.NOT_FOUND,
        Reason.REJECTED,
        Reason.TLS,
        Reason.REDIRECT,
        Reason.INVALID_DATA,
        Reason.TOO_LARGE,
    }
)

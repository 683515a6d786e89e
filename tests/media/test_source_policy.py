"""The source policy as plain values in, decisions out (no sockets, no files)."""

from __future__ import annotations

import errno

import av.error
import pytest

from streamseg.config import Settings
from streamseg.media.source_policy import (
    FILE_REFUSED,
    FILES_DISABLED,
    HostRule,
    ParsedSource,
    Reason,
    SourceError,
    SourcePolicy,
    address_refusal,
    check_addresses,
    check_file,
    ffmpeg_open_spec,
    parse_source,
    policy_from_settings,
    reason_for,
    redact,
    safe_text,
)

ROOT = "/srv/media"
DEFAULT = SourcePolicy()
FILES = SourcePolicy(media_root=ROOT)


def _refused(url: str, policy: SourcePolicy = DEFAULT) -> SourceError:
    with pytest.raises(SourceError) as caught:
        parse_source(url, policy)
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://127.0.0.1:8554/x\r\nX-Injected: yes\r\n",
        "rtsp://cam/live\n",
        "http://cam/a\x00b",
        "http://cam/\tx",
        "rtsp://cam/\x7f",
        "rtsp://cam/\x85next-line",
        "rtsp://cam/\u2028",
        "/srv/media/clip.mp4\r\n",
    ],
)
def test_control_characters_are_refused(url: str) -> None:
    error = _refused(url, FILES)
    assert error.reason is Reason.BAD_URL and "control characters" in str(error)
    assert "\r" not in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://cam/x", Reason.UNSUPPORTED),
        ("gopher://cam/x", Reason.UNSUPPORTED),
        ("tcp://cam:80", Reason.UNSUPPORTED),
        ("concat:/a.mp4|/b.mp4", Reason.UNSUPPORTED),
        ("data:video/mp4;base64,AAAA", Reason.UNSUPPORTED),
        ("rtsp:///nohost", Reason.BAD_URL),
        ("http://[::1/", Reason.BAD_URL),
        ("rtsp://cam:99999/x", Reason.BAD_URL),
        ("http://cam/a b", Reason.BAD_URL),
        ("rtsp://cam/live?transport=quic", Reason.BAD_URL),
    ],
)
def test_schemes_and_malformed_urls(url: str, reason: Reason) -> None:
    assert _refused(url).reason is reason


def test_allowed_network_sources() -> None:
    rtsp = parse_source("rtsp://Cam.local/live?transport=udp&channel=1", DEFAULT)
    assert (rtsp.kind, rtsp.host, rtsp.port, rtsp.transport) == ("rtsp", "cam.local", 554, "udp")
    assert rtsp.target == "rtsp://Cam.local/live?channel=1"
    assert parse_source("rtsps://cam/x", DEFAULT).port == 322
    https = parse_source("https://[fd00::5]:8443/s.ts", DEFAULT)
    assert (https.kind, https.host, https.port, https.tls) == ("http", "fd00::5", 8443, True)
    rtsp_only = SourcePolicy(schemes=("rtsp",))
    assert _refused("http://cam/x", rtsp_only).reason is Reason.UNSUPPORTED


@pytest.mark.parametrize(
    "url", ["/etc/passwd", "file:///etc/shadow", "clip.mp4", "/srv/media/a.mp4", "C:/a.mp4"]
)
def test_files_are_off_by_default_with_one_answer(url: str) -> None:
    error = _refused(url)
    assert error.reason is Reason.FORBIDDEN and str(error) == FILES_DISABLED


def test_file_paths_are_joined_under_the_root() -> None:
    assert parse_source("clip.mp4", FILES).target == f"{ROOT}/clip.mp4"
    assert parse_source("../../etc/passwd", FILES).target == "/etc/passwd"  # refused later
    assert parse_source("file:///srv/media/a%20b.mp4", FILES).target == f"{ROOT}/a b.mp4"
    assert parse_source("file://localhost/srv/media/a.mp4", FILES).kind == "file"
    assert str(_refused("file://otherhost/srv/media/a.mp4", FILES)) == FILE_REFUSED


def test_check_file_gives_one_answer_for_every_refusal() -> None:
    assert check_file(ROOT, f"{ROOT}/cams/a.mp4", True) == f"file:{ROOT}/cams/a.mp4"
    refusals = [
        (f"{ROOT}/missing.mp4", False),  # missing (or unreadable, or a directory)
        (None, False),  # the path could not be resolved at all
        ("/etc/passwd", True),  # outside the root
        ("/srv/media-other/a.mp4", True),  # a sibling whose name starts like the root
        ("/srv/secret.txt", True),  # where a symlink inside the root pointed
        (ROOT, True),  # the root itself
    ]
    messages = set()
    for real, usable in refusals:
        with pytest.raises(SourceError) as caught:
            check_file(ROOT, real, usable)
        assert caught.value.reason is Reason.FORBIDDEN
        messages.add(str(caught.value))
    assert messages == {FILE_REFUSED}


def test_devices_only_when_configured() -> None:
    assert _refused("/dev/video0").reason is Reason.FORBIDDEN
    assert _refused("/dev/zero").reason is Reason.FORBIDDEN
    allowed = SourcePolicy(devices=("/dev/video0",))
    assert parse_source("/dev/video0", allowed).kind == "v4l2"
    assert _refused("/dev/video1", allowed).reason is Reason.FORBIDDEN


def _why(address: str, policy: SourcePolicy = DEFAULT, host: str = "cam") -> str | None:
    import ipaddress

    return address_refusal(ipaddress.ip_address(address), host, policy)


def test_addresses_by_default() -> None:
    for denied in ("169.254.169.254", "169.254.10.1", "fe80::1", "fd00:ec2::254"):
        assert _why(denied) is not None, denied
    for loopback in ("127.0.0.1", "127.8.8.8", "0.0.0.0", "::1", "::"):
        assert "loopback" in (_why(loopback) or ""), loopback
    for private in ("10.1.2.3", "172.16.0.9", "192.168.1.64", "100.64.0.1", "fd12::1"):
        assert _why(private) is None, private  # cameras live on private LANs
    assert _why("8.8.8.8") is None
    assert _why("224.0.0.1") is not None and _why("240.0.0.1") is not None


def test_configured_host_rules() -> None:
    loopback = SourcePolicy(allow_loopback=True)
    assert _why("127.0.0.1", loopback) is None
    assert _why("169.254.169.254", loopback) is not None  # metadata stays denied
    lan_only = SourcePolicy(allow_public=False)
    assert _why("8.8.8.8", lan_only) is not None and _why("192.168.1.5", lan_only) is None
    no_private = SourcePolicy(allow_private=False)
    assert _why("10.0.0.1", no_private) is not None
    listed = SourcePolicy(
        allow_hosts=(HostRule.parse("192.168.7.0/24"), HostRule.parse("*.cams.example")),
        deny_hosts=(HostRule.parse("192.168.7.66"),),
    )
    assert _why("192.168.7.10", listed) is None
    assert _why("192.168.7.66", listed) is not None  # deny wins
    assert _why("192.168.8.10", listed) is not None  # not on the allow list
    assert _why("10.9.9.9", listed, host="dock.cams.example") is None
    assert _why("169.254.169.254", listed, host="dock.cams.example") is not None
    auto_ip = SourcePolicy(allow_hosts=(HostRule.parse("169.254.3.0/24"),))
    assert _why("169.254.3.7", auto_ip) is None  # link-local only when named
    with pytest.raises(ValueError):
        HostRule.parse("user@host")


def test_every_resolved_address_must_pass() -> None:
    check_addresses("cam", ["192.168.1.5", "fd00::5"], DEFAULT)
    for mixed in (["192.168.1.5", "169.254.169.254"], ["::ffff:169.254.169.254"]):
        with pytest.raises(SourceError) as caught:
            check_addresses("cam", mixed, DEFAULT)
        assert caught.value.reason is Reason.FORBIDDEN
    with pytest.raises(SourceError) as caught:
        check_addresses("cam", [], DEFAULT)
    assert caught.value.reason is Reason.UNREACHABLE


def _spec(url: str, policy: SourcePolicy = DEFAULT, **kw: object) -> dict[str, str]:
    parsed = parse_source(url, policy)
    args: dict[str, object] = {"transport": "tcp", "tls_verify": True, "ca_file": None, **kw}
    return ffmpeg_open_spec(parsed, parsed.target, policy, **args).options  # type: ignore[arg-type]


def test_ffmpeg_is_fenced_per_scheme() -> None:
    rtsp = _spec("rtsp://cam/x")
    assert rtsp["protocol_whitelist"] == "tcp,udp,rtp" and rtsp["format_whitelist"] == "rtsp"
    assert "tls_verify" not in rtsp and rtsp["rtsp_transport"] == "tcp"
    http = _spec("http://cam/x.ts")
    assert http["protocol_whitelist"] == "http,tcp" and http["max_redirects"] == "0"
    formats = http["format_whitelist"].split(",")
    assert "mpegts" in formats and "mpjpeg" in formats
    assert not {"tty", "image2", "png_pipe", "hls", "concat"} & set(formats)
    https = _spec("https://cam/x.ts", ca_file="/etc/ca.pem")
    assert https["protocol_whitelist"] == "https,tls,tcp"
    assert https["tls_verify"] == "1" and https["ca_file"] == "/etc/ca.pem"
    assert _spec("rtsps://cam/x")["tls_verify"] == "1"
    assert _spec("rtsps://cam/x", tls_verify=False)["tls_verify"] == "0"
    files = _spec("clip.mp4", FILES)
    assert files["protocol_whitelist"] == "file" and "tty" not in files["format_whitelist"]
    images = _spec("a.png", SourcePolicy(media_root=ROOT, allow_images=True))
    assert "png_pipe" in images["format_whitelist"].split(",")
    assert _spec("rtsp://cam/x", SourcePolicy(max_frame_side=100))["max_pixels"] == "10000"
    device = ParsedSource("/dev/video0", "v4l2", "v4l2", "/dev/video0")
    spec = ffmpeg_open_spec(device, "/dev/video0", DEFAULT, transport="tcp", tls_verify=True,
                            ca_file=None)  # fmt: skip
    assert spec.format == "v4l2"


def test_policy_from_settings() -> None:
    settings = Settings(
        source_media_root="/m",
        source_allow_hosts=("10.0.0.0/8", "cam.example"),
        source_allow_loopback=True,
        source_formats=("mpegts",),
        max_frame_side=2048,
    )
    policy = policy_from_settings(settings)
    assert policy.media_root == "/m" and policy.allow_loopback and policy.formats == ("mpegts",)
    assert [r.name or str(r.network) for r in policy.allow_hosts] == ["10.0.0.0/8", "cam.example"]
    assert policy.max_frame_side == 2048
    default = policy_from_settings(Settings())
    assert default.media_root is None and not default.allow_loopback and default.allow_private


def test_reasons_from_ffmpeg_errors() -> None:
    url = "rtsp://admin:hunter2@cam/x"
    cases: list[tuple[BaseException, Reason]] = [
        (av.error.ConnectionRefusedError(errno.ECONNREFUSED, "refused", url), Reason.REFUSED),
        (av.error.HTTPUnauthorizedError(1, "401", url), Reason.AUTH_FAILED),
        (av.error.HTTPForbiddenError(1, "403", url), Reason.AUTH_FAILED),
        (av.error.HTTPNotFoundError(1, "404", url), Reason.NOT_FOUND),
        (av.error.HTTPServerError(1, "5xx", url), Reason.SERVER_ERROR),
        (av.error.HTTPBadRequestError(1, "400", url), Reason.REJECTED),
        (av.error.InvalidDataError(1, "invalid", url), Reason.INVALID_DATA),
        (av.error.DecoderNotFoundError(1, "no decoder", url), Reason.UNSUPPORTED),
        (av.error.ArgumentError(errno.EINVAL, "not on whitelist", url), Reason.UNSUPPORTED),
        (av.error.OSError(errno.EIO, "I/O error", url), Reason.UNREACHABLE),
        (av.error.PermissionError(errno.EACCES, "denied", url), Reason.AUTH_FAILED),
        (av.error.ExitError(1, "exit", url), Reason.TIMEOUT),
        (SourceError("policy", Reason.FORBIDDEN), Reason.FORBIDDEN),
        (RuntimeError("other"), Reason.ERROR),
    ]
    for exc, reason in cases:
        assert reason_for(exc) is reason, exc
    assert reason_for(av.error.InvalidDataError(1, "x", url), timed_out=True) is Reason.TIMEOUT


def test_redaction_and_log_safety() -> None:
    assert redact("rtsp://admin:secret@cam:554/live") == "rtsp://admin:***@cam:554/live"
    assert redact("rtsp://admin:secret@[fd00::5]/live") == "rtsp://admin:***@[fd00::5]/live"
    hidden = redact("http://cam/s.ts?user=a&password=secret&api_key=k1&channel=2")
    assert "secret" not in hidden and "k1" not in hidden and "channel=2" in hidden
    assert redact("http://[::1/") == "<unparsable URL>"
    assert safe_text("a\r\nX-Injected: yes") == "a\\r\\nX-Injected: yes"
    assert "\n" not in redact("rtsp://cam/x\r\nX: y")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "rtsp://10.0.0.5:554/user=admin&password=hunter2&channel=1&stream=0.sdp",
            "rtsp://10.0.0.5:554/user=admin&password=***&channel=1&stream=0.sdp",
        ),
        ("rtsp://cam/live;pwd=hunter2", "rtsp://cam/live;pwd=***"),
        ("http://cam/x?pw=hunter2&ch=1", "http://cam/x?pw=***&ch=1"),
        ("rtsp://hunter2@cam/live", "rtsp://***@cam/live"),
        ("rtsp://cam/live/ch1", "rtsp://cam/live/ch1"),
    ],
)
def test_camera_credentials_outside_the_password_field_are_hidden(url: str, shown: str) -> None:
    """Credentials cameras carry in the path, in short query keys or as a bare user
    name never reach the API, the audit log or a streams file."""
    assert redact(url) == shown


def test_redaction_hides_credentials_of_a_url_nested_in_path_or_query() -> None:
    for url in (
        "rtsp://cam/x?http://admin:s3cret@h/p",
        "http://h/img?next=rtsp%3A%2F%2Fadmin%3As3cret%40cam%2F",
        "http://h/a//admin:s3cret@b/c",
    ):
        shown = redact(url)
        assert "s3cret" not in shown and "admin" not in shown, shown
    assert redact("rtsp://cam/s?x=1&y=a@b") == "rtsp://cam/s?x=1&y=a@b"

"""Server settings: one dataclass, filled from flags with environment fallbacks
(`STREAMSEG_<FIELD>` in upper case)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    drain_s: float = 0.0  # after a stop signal: /readyz 503, keep serving this long
    # CPU only: the inference thread's nice value, so decoding and the live video keep
    # their pace while the model uses every core (0: same priority as the rest).
    inference_nice: int = 10
    model: str = "tiny"
    weights: str = "official"  # "official" (download), "random", or a checkpoint path
    image_size: int | None = None  # default: the variant's own
    backend: str = "torch"
    precision: str | None = None  # onnx backend: fp32 | fp16 | int8 (CPU); default by device
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str | None = None  # bfloat16 / float16 autocast on CUDA
    # torch backend: image encoder and memory attention through torch.compile (inductor),
    # compiled while the server starts (docs/ENGINES.md: what it gives, what it costs).
    compile: bool = False
    seed: int = 0
    threads: int | None = None  # torch CPU threads
    # limits
    max_peers: int = 8
    max_streams: int = 16
    max_tracks: int = 16
    max_frame_side: int = 4096
    max_upload_bytes: int = 16 * 1024 * 1024
    max_prompts_per_request: int = 32
    max_batch: int = 8
    prompt_history: int = 8
    # image embedding cache for POST /v1/images: count and bytes per token, bytes in all
    image_cache_size: int = 16
    image_cache_ttl_s: float = 600.0
    image_cache_bytes: int = 512 * 1024 * 1024
    image_cache_total_bytes: int = 1024 * 1024 * 1024
    # lifecycle (docs/SECURITY.md, "Limits"): an ended camera stream is kept this long
    # for inspection, then freed; a WebRTC peer not connected by then is closed.
    ended_stream_ttl_s: float = 30.0
    webrtc_setup_timeout_s: float = 20.0
    # REST inference (/v1/segment, /v1/images): per token, requests a second (bucket of
    # `rest_burst`) and at once; queued on the model at most `rest_queue` (then 429).
    rest_rate_per_s: float = 20.0
    rest_burst: int = 40
    rest_concurrency_per_token: int = 4
    rest_queue: int = 8
    # While streams are served, REST jobs get at most this share of the model's time.
    rest_share: float = 0.25
    # per client address (0: no limit); headers must arrive within `header_timeout_s`
    # of connecting or of the previous response; idle keep-alive connections close.
    max_connections_per_client: int = 64
    max_websockets_per_client: int = 16
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: int = 5
    max_header_bytes: int = 16 * 1024
    # proxies whose X-Forwarded-For is believed (empty: none; the peer is the client)
    forwarded_allow_ips: tuple[str, ...] = field(default_factory=tuple)
    # WebRTC: host addresses offered as ICE candidates (empty = every interface)
    ice_hosts: tuple[str, ...] = field(default_factory=tuple)
    # STUN/TURN URLs; none by default so nothing leaves the host unless asked for.
    ice_servers: tuple[str, ...] = field(default_factory=tuple)
    web_dir: str | None = None  # default: the repo's web/ next to the package
    # camera sources (docs/SECURITY.md, "Camera sources"): what POST /v1/streams may open
    source_schemes: tuple[str, ...] = ("rtsp", "rtsps", "http", "https")
    source_media_root: str | None = None  # file sources: off unless set, then only under it
    source_devices: tuple[str, ...] = ()  # V4L2 devices allowed, e.g. /dev/video0
    source_allow_hosts: tuple[str, ...] = ()  # names / CIDRs; when set, only these
    source_deny_hosts: tuple[str, ...] = ()  # names / CIDRs, on top of the built-in denials
    source_allow_loopback: bool = False  # 127.0.0.0/8, ::1 (the server's own host)
    source_allow_private: bool = True  # 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7
    source_allow_public: bool = True
    source_formats: tuple[str, ...] = ()  # FFmpeg demuxers; empty: the video defaults
    source_allow_images: bool = False  # image demuxers (png_pipe, image2, mjpeg, ...)
    source_ca_file: str | None = None  # CA bundle for https/rtsps; default: the system's
    # `image_url` on /v1/segment (media/image_fetch.py): off unless turned on; then
    # fetched through the source policy above, at most `max_upload_bytes`, in this time.
    allow_image_urls: bool = False
    image_fetch_timeout_s: float = 10.0
    # Foxglove bridge (server/foxglove_bridge.py): off unless a port is given (0: any
    # free port). No authentication in that protocol, hence loopback unless the flag.
    foxglove_port: int | None = None
    foxglove_host: str = "127.0.0.1"
    insecure_foxglove_on_network: bool = False
    foxglove_backlog: int = 64  # the SDK's per-client queue, messages (drops oldest)
    foxglove_jpeg_quality: int = 80
    # YAML file of camera streams created at start-up (server/streams_file.py); REST
    # changes are written back to it with `?persist=true`.
    streams_file: str | None = None
    # access control (docs/SECURITY.md). `token`: one token with every scope, id `env`;
    # from STREAMSEG_TOKEN, never a flag (argv is visible to every local user).
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None  # `<id> <scopes> <token>` lines, re-read when changed
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)  # beyond loopback; * = any
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)  # cross-origin + CORS
    insecure_no_auth_on_network: bool = False  # no tokens at all, on any address

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"STREAMSEG_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _coerce(f.name, raw, getattr(cls(), f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _coerce(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int) and not isinstance(default, bool):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return _split(raw)
    if name in ("image_size", "threads", "foxglove_port"):
        return int(raw)
    return raw

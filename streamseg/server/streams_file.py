"""The streams file: camera streams declared in YAML, created at start-up, so that a
restart brings back the same streams under the same ids.

Pure: text in, definitions out (or a `StreamsFileError` naming the line and the
reason), and definitions back to text. Reading, writing and creating streams live in
`server/stream_store.py`.

    version: 1
    streams:
      - id: dock                       # [A-Za-z0-9][A-Za-z0-9_-]*, at most 64
        url: rtsp://viewer:${DOCK_PASSWORD}@192.168.1.20/live
        name: Dock camera              # optional
        options: {stall_timeout_s: 3}  # optional, as in POST /v1/streams
        prompts:                       # optional initial boxes, applied on the first frame
          - {box: [300, 160, 390, 240]}
          - {box: [10, 10, 90, 120], track_id: 7}
        frame_id: dock_camera          # optional: Foxglove frame id (default: the id)

`${NAME}` in a URL is replaced by the environment variable NAME when the file is read
(`$$` is a literal `$`), so passwords stay out of the file; the file keeps the
placeholder and nothing expanded is ever written back.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from streamseg.media.source_policy import (
    SourceError,
    SourcePolicy,
    check_addresses,
    parse_source,
    redact,
)
from streamseg.protocol.prompts import AddPrompt, PromptError, PromptLimits, parse_client_message

FORMAT_VERSION = 1
MAX_ID_CHARS = 64
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Ids the server hands out itself (s1, s2, ...) are reserved, so a declared id never
# collides with an ad-hoc stream.
SERVER_ID = re.compile(r"s[0-9]+")
PLACEHOLDER = re.compile(r"\$(?:\{([^}]*)\}|(\$))")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENTRY_KEYS = ("id", "url", "name", "options", "prompts", "frame_id")
PROMPT_KEYS = ("box", "track_id")
MAX_NAME_CHARS = 200
MAX_FRAME_ID_CHARS = 200
MAX_URL_CHARS = 2048
HEADER = (
    "# streamseg streams file (docs/ROBOTS.md). Written by `POST /v1/streams?persist=true`:\n"
    "# the whole file is rewritten, so comments are not kept.\n"
)

OptionsValidator = Callable[[dict[str, Any]], object]


class StreamsFileError(ValueError):
    """The file cannot be used; the message names the file, the line and the reason."""

    def __init__(self, reason: str, line: int | None = None, path: str | None = None) -> None:
        self.reason, self.line, self.path = reason, line, path
        where = path or "streams file"
        super().__init__(f"{where}:{line}: {reason}" if line is not None else f"{where}: {reason}")

    def at(self, path: str) -> StreamsFileError:
        return StreamsFileError(self.reason, self.line, path)


@dataclass(frozen=True, slots=True)
class InitialPrompt:
    """A box to start a track with on the stream's first processed frame."""

    box: tuple[float, float, float, float]
    track_id: int | None = None

    def message(self) -> AddPrompt:
        """As a client message, so it is applied exactly like one from a robot."""
        return AddPrompt(track_id=self.track_id, points=(), labels=(), box=self.box)


@dataclass(frozen=True, slots=True)
class StreamDefinition:
    """One declared stream. `url_template` is what the file says (placeholders kept,
    the only form ever written back); `url` is what is opened (may hold secrets)."""

    id: str
    url_template: str
    url: str = field(repr=False)
    name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    prompts: tuple[InitialPrompt, ...] = ()
    line: int | None = None
    frame_id: str | None = None  # the Foxglove bridge's frame id (default: the stream id)

    @property
    def public_url(self) -> str:
        return redact(self.url)


def stream_id_problem(value: object) -> str | None:
    """Why `value` cannot be a user-chosen stream id, or None when it can. Ids appear in
    URL paths, metric labels and logs, hence the small alphabet."""
    if not isinstance(value, str):
        return f"an id must be a string, got {type(value).__name__}"
    if not STREAM_ID.fullmatch(value):
        return (
            f"id {json.dumps(value)[:80]} must be 1-{MAX_ID_CHARS} characters of A-Z, a-z, "
            "0-9, '_' and '-', starting with a letter or digit"
        )
    if SERVER_ID.fullmatch(value):
        return f"id {value!r} is reserved: s<number> ids are assigned by the server"
    return None


def expand(template: str, env: Mapping[str, str]) -> str:
    """`${NAME}` from `env`, `$$` as `$`; KeyError names an unset variable, ValueError a
    malformed placeholder."""

    def one(match: re.Match[str]) -> str:
        if match.group(2) is not None:
            return "$"
        name = match.group(1)
        if not ENV_NAME.fullmatch(name):
            raise ValueError(
                f"${{{name[:40]}}} is not a valid placeholder: ${{NAME}}, NAME of A-Z, 0-9, _"
            )
        if name not in env:
            raise KeyError(name)
        return env[name]

    return PLACEHOLDER.sub(one, template)


def escape(url: str) -> str:
    """A literal URL as a template that expands to itself (REST-created streams: their
    `$` must never turn into a placeholder after a restart)."""
    return url.replace("$", "$$")


# ---- reading -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """A YAML value with the line it starts on (1-based)."""

    value: Any
    line: int


def _located(node: yaml.Node, loader: yaml.SafeLoader) -> _Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        items: dict[Any, tuple[_Node, _Node]] = {}
        for key_node, value_node in node.value:
            key = _located(key_node, loader)
            if not isinstance(key.value, str):
                raise StreamsFileError(f"keys must be strings, got {key.value!r}", key.line)
            if key.value in items:
                raise StreamsFileError(f"{key.value!r} appears twice", key.line)
            items[key.value] = (key, _located(value_node, loader))
        return _Node(items, line)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_located(n, loader) for n in node.value], line)
    return _Node(loader.construct_object(node), line)


def _plain(node: _Node) -> Any:
    """The Python value of a located node (for options handed to their validator)."""
    if isinstance(node.value, dict):
        return {k: _plain(v) for k, (_, v) in node.value.items()}
    if isinstance(node.value, list):
        return [_plain(v) for v in node.value]
    return node.value


def _mapping(node: _Node, what: str, allowed: Sequence[str]) -> dict[str, tuple[_Node, _Node]]:
    if not isinstance(node.value, dict):
        raise StreamsFileError(f"{what} must be a mapping, got {_kind(node.value)}", node.line)
    for key, (key_node, _) in node.value.items():
        if key not in allowed:
            raise StreamsFileError(
                f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}", key_node.line
            )
    items: dict[str, tuple[_Node, _Node]] = node.value
    return items


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _string(node: _Node, what: str, limit: int) -> str:
    if not isinstance(node.value, str) or not node.value:
        raise StreamsFileError(
            f"{what} must be a non-empty string, got {_kind(node.value)}", node.line
        )
    if len(node.value) > limit:
        raise StreamsFileError(f"{what} is longer than {limit} characters", node.line)
    return node.value


def parse_streams_file(
    text: str,
    env: Mapping[str, str],
    *,
    policy: SourcePolicy | None = None,
    validate_options: OptionsValidator | None = None,
    limits: PromptLimits | None = None,
) -> list[StreamDefinition]:
    """Every stream the file declares, in order; StreamsFileError (with the line) for
    anything wrong: YAML syntax, unknown keys, a bad or repeated id, an unset variable,
    a URL the source `policy` refuses, options `validate_options` refuses, a bad box.
    Error messages never quote an expanded URL."""
    loader = yaml.SafeLoader(text)
    try:
        root_node = loader.get_single_node()
        root = None if root_node is None else _located(root_node, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        raise StreamsFileError(f"not valid YAML: {exc.problem or exc.context}", line) from None
    except yaml.YAMLError as exc:
        raise StreamsFileError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if root is None:
        return []  # an empty file: no streams
    top = _mapping(root, "the file", ("version", "streams"))
    if "version" in top:
        version_node = top["version"][1]
        if version_node.value != FORMAT_VERSION or isinstance(version_node.value, bool):
            raise StreamsFileError(
                f"version must be {FORMAT_VERSION}, got {version_node.value!r}", version_node.line
            )
    if "streams" not in top or top["streams"][1].value is None:
        return []
    streams_node = top["streams"][1]
    if not isinstance(streams_node.value, list):
        raise StreamsFileError(
            f"streams must be a list, got {_kind(streams_node.value)}", streams_node.line
        )
    seen: dict[str, int] = {}
    definitions = []
    for entry in streams_node.value:
        definition = _definition(entry, env, policy, validate_options, limits or PromptLimits())
        if definition.id in seen:
            raise StreamsFileError(
                f"id {definition.id!r} is already used on line {seen[definition.id]}", entry.line
            )
        seen[definition.id] = entry.line
        definitions.append(definition)
    return definitions


def _definition(
    entry: _Node,
    env: Mapping[str, str],
    policy: SourcePolicy | None,
    validate_options: OptionsValidator | None,
    limits: PromptLimits,
) -> StreamDefinition:
    items = _mapping(entry, "a stream", ENTRY_KEYS)
    for required in ("id", "url"):
        if required not in items:
            raise StreamsFileError(f"a stream needs {required!r}", entry.line)
    id_node = items["id"][1]
    problem = stream_id_problem(id_node.value)
    if problem is not None:
        raise StreamsFileError(problem, id_node.line)
    stream_id: str = id_node.value
    url_node = items["url"][1]
    template = _string(url_node, "url", MAX_URL_CHARS)
    try:
        url = expand(template, env)
    except KeyError as exc:
        raise StreamsFileError(
            f"url of {stream_id!r}: the environment variable {exc.args[0]} is not set",
            url_node.line,
        ) from None
    except ValueError as exc:
        raise StreamsFileError(f"url of {stream_id!r}: {exc}", url_node.line) from None
    if policy is not None:
        try:
            parsed = parse_source(url, policy)
            if parsed.host is not None and _is_address(parsed.host):
                check_addresses(parsed.host, [parsed.host], policy)  # names: at start-up
        except SourceError as exc:  # its text never quotes the URL
            raise StreamsFileError(
                f"url of {stream_id!r} refused ({exc.reason.value}): {exc}", url_node.line
            ) from None
    name = None
    if "name" in items and items["name"][1].value is not None:
        name = _string(items["name"][1], "name", MAX_NAME_CHARS)
    options: dict[str, Any] = {}
    if "options" in items and items["options"][1].value is not None:
        options_node = items["options"][1]
        if not isinstance(options_node.value, dict):
            raise StreamsFileError(
                f"options must be a mapping, got {_kind(options_node.value)}", options_node.line
            )
        options = _plain(options_node)
        if validate_options is not None:
            _check_options(options_node, options, validate_options)
    prompts: tuple[InitialPrompt, ...] = ()
    if "prompts" in items and items["prompts"][1].value is not None:
        prompts = _prompts(items["prompts"][1], limits)
    frame_id = None
    if "frame_id" in items and items["frame_id"][1].value is not None:
        frame_id = _string(items["frame_id"][1], "frame_id", MAX_FRAME_ID_CHARS)
    return StreamDefinition(stream_id, template, url, name, options, prompts, entry.line, frame_id)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _check_options(node: _Node, options: dict[str, Any], validate: OptionsValidator) -> None:
    """Options go through the same model as the REST body; its first complaint is
    reported on the line of the option it names."""
    try:
        validate(options)
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        first = errors()[0] if callable(errors) and errors() else None
        if first is None:
            raise StreamsFileError(f"options: {exc}", node.line) from None
        loc = first.get("loc") or ()
        key = str(loc[0]) if loc else None
        line = node.value[key][0].line if key in node.value else node.line
        what = f"options.{key}" if key else "options"
        message = str(first.get("msg", "invalid"))
        if first.get("type") == "extra_forbidden":
            message = "unknown option"
        raise StreamsFileError(f"{what}: {message}", line) from None


def _prompts(node: _Node, limits: PromptLimits) -> tuple[InitialPrompt, ...]:
    if not isinstance(node.value, list):
        raise StreamsFileError(f"prompts must be a list, got {_kind(node.value)}", node.line)
    prompts = []
    for item in node.value:
        fields = _mapping(item, "a prompt", PROMPT_KEYS)
        if "box" not in fields:
            raise StreamsFileError("a prompt needs a box: [x0, y0, x1, y1]", item.line)
        body: dict[str, Any] = {"type": "prompt", "box": _plain(fields["box"][1])}
        if "track_id" in fields:
            body["track_id"] = fields["track_id"][1].value
        try:
            msg = parse_client_message(body, limits)
        except PromptError as exc:
            raise StreamsFileError(f"prompt: {exc}", item.line) from None
        assert isinstance(msg, AddPrompt) and msg.box is not None
        box = (float(msg.box[0]), float(msg.box[1]), float(msg.box[2]), float(msg.box[3]))
        prompts.append(InitialPrompt(box, msg.track_id))
    return tuple(prompts)


# ---- writing -------------------------------------------------------------------------


def _entry(definition: StreamDefinition) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": definition.id, "url": definition.url_template}
    if definition.name is not None:
        entry["name"] = definition.name
    if definition.options:
        entry["options"] = dict(definition.options)
    if definition.prompts:
        entry["prompts"] = [
            {"box": list(p.box), **({"track_id": p.track_id} if p.track_id is not None else {})}
            for p in definition.prompts
        ]
    if definition.frame_id is not None:
        entry["frame_id"] = definition.frame_id
    return entry


def dump_streams_file(definitions: Sequence[StreamDefinition]) -> str:
    """The file's text for `definitions`: templates only, never an expanded URL."""
    body = {"version": FORMAT_VERSION, "streams": [_entry(d) for d in definitions]}
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return HEADER + text


def with_stream(
    definitions: Sequence[StreamDefinition], definition: StreamDefinition
) -> list[StreamDefinition]:
    """`definitions` with `definition` added, or replacing the one with its id in place."""
    out = list(definitions)
    for i, existing in enumerate(out):
        if existing.id == definition.id:
            out[i] = definition
            return out
    return [*out, definition]


def without_stream(
    definitions: Sequence[StreamDefinition], stream_id: str
) -> list[StreamDefinition]:
    return [d for d in definitions if d.id != stream_id]

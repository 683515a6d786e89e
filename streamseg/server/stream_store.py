"""The streams file on disk (`--streams-file`, `STREAMSEG_STREAMS_FILE`): read and checked
when the app is created (a bad file refuses start-up before the model loads), its
streams created once the model is ready, and REST changes written back when asked
(`?persist=true`), atomically: a temporary file in the same folder, fsynced, renamed
over the old one, so a crash leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamseg.config import Settings
from streamseg.media.source_policy import policy_from_settings, redact
from streamseg.protocol.prompts import PromptLimits
from streamseg.server.streams_file import (
    StreamDefinition,
    StreamsFileError,
    dump_streams_file,
    escape,
    parse_streams_file,
    with_stream,
    without_stream,
)

if TYPE_CHECKING:
    from streamseg.server.cameras import CameraStream
    from streamseg.server.runtime import Runtime

log = logging.getLogger(__name__)
FIRST_FRAME_TIMEOUT_S = 600.0  # initial prompts wait this long for a first frame
UNPARSABLE = redact("http://[")  # what `redact` says of a URL it cannot parse


class PersistRefused(Exception):
    """`?persist=true` that cannot be honoured: HTTP `status`, `code`, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def read_text(path: str) -> str | None:
    """The file's text, None when it does not exist (yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise StreamsFileError("not UTF-8 text", path=path) from None
    except OSError as exc:
        raise StreamsFileError(f"cannot be read: {exc.strerror}", path=path) from None


def write_atomic(path: str, text: str) -> None:
    """Replace the file at `path` (a symlink's target, so the link stays) with `text`:
    temp file, fsync, rename, fsync of the folder. Keeps the old file's mode (0600 for
    a new one). Blocking: call it off the loop."""
    target = os.path.realpath(path)
    folder = os.path.dirname(target) or "."
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, temp = tempfile.mkstemp(prefix=".streams-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _options_validator() -> Callable[[dict[str, Any]], object]:
    from streamseg.server.routes_streams import StreamOptions

    return StreamOptions.model_validate


@dataclass
class StreamStore:
    """The streams file of one server (none when `path` is None)."""

    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    definitions: list[StreamDefinition] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _prompting: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def path(self) -> str | None:
        return self.settings.streams_file

    def parse(self, text: str) -> list[StreamDefinition]:
        """Check `text` as this server would (its source policy, its option model, its
        prompt limits); StreamsFileError names the file, line and reason."""
        try:
            return parse_streams_file(
                text,
                self.env,
                policy=policy_from_settings(self.settings),
                validate_options=_options_validator(),
                limits=PromptLimits(max_points=self.settings.max_prompts_per_request),
            )
        except StreamsFileError as exc:
            raise exc.at(self.path or "streams file") from None

    def load(self) -> list[StreamDefinition]:
        """Read and check the file (blocking; before the server starts). A file that
        does not exist yet declares nothing: `?persist=true` will create it."""
        if self.path is None:
            return []
        text = read_text(self.path)
        if text is None:
            log.warning("streams file %s does not exist yet: no streams from it", self.path)
            self.definitions = []
        else:
            self.definitions = self.parse(text)
            log.info("streams file %s: %d stream(s)", self.path, len(self.definitions))
        return self.definitions

    async def start_streams(self, runtime: Runtime) -> None:
        """Create every declared stream (the model is ready). A URL the source policy
        refuses once its name resolves refuses start-up, like a syntax error."""
        from streamseg.server.routes_streams import CameraRefused, StreamCreate, start_camera

        for definition in self.definitions:
            body = StreamCreate.model_validate(
                {
                    "url": definition.url,
                    "name": definition.name,
                    "id": definition.id,
                    "options": dict(definition.options),
                }
            )
            try:
                camera = await start_camera(runtime, body, persisted=True)
            except CameraRefused as exc:
                why = exc.detail.get("reason") or exc.detail["code"]
                error = StreamsFileError(
                    f"stream {definition.id!r} refused ({why}): {exc.message}",
                    definition.line,
                    self.path,
                )
                runtime.start_error = str(error)
                raise error from None
            log.info("stream %s from the streams file: %s", definition.id, camera.reader.public_url)
            if definition.prompts:
                task = asyncio.ensure_future(self._initial_prompts(runtime, camera, definition))
                self._prompting.add(task)
                task.add_done_callback(self._prompting.discard)

    async def _initial_prompts(
        self, runtime: Runtime, camera: CameraStream, definition: StreamDefinition
    ) -> None:
        """The file's boxes, on the stream's first processed frame (the tracker needs
        one), applied like a robot's prompts; a refusal is logged, not fatal."""
        from streamseg.server.cameras import apply_message

        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        remove = camera.session.add_sink(
            lambda _: first.done() or first.set_result(None)  # type: ignore[func-returns-value]
        )
        try:
            await asyncio.wait_for(first, FIRST_FRAME_TIMEOUT_S)
        except TimeoutError:
            log.warning("stream %s: no frame in time for its initial prompts", definition.id)
            return
        finally:
            remove()
        for prompt in definition.prompts:
            try:
                result = await apply_message(runtime, camera.session, prompt.message())
            except Exception as exc:
                log.warning(
                    "stream %s (streams file line %s): initial box %s refused: %s",
                    definition.id,
                    definition.line,
                    list(prompt.box),
                    exc,
                )
            else:
                log.info("stream %s: initial box started track %s", definition.id, result)

    def stop(self) -> None:
        for task in list(self._prompting):
            task.cancel()

    def frame_id_for(self, stream_id: str) -> str | None:
        """The `frame_id` the file gives a stream (for the Foxglove bridge), if any."""
        for definition in self.definitions:
            if definition.id == stream_id:
                return definition.frame_id
        return None

    # ---- persistence ------------------------------------------------------------------

    def definition_for(
        self, stream_id: str | None, url: str, name: str | None, options: Mapping[str, Any]
    ) -> StreamDefinition:
        """What `POST /v1/streams?persist=true` would write; PersistRefused when it
        cannot: no streams file, no id, or a credential in the URL (a REST URL is
        literal, and the file must never hold a secret: put it in the file by hand as
        a ${VAR} placeholder instead)."""
        if self.path is None:
            raise PersistRefused(
                409,
                "no_streams_file",
                "persist needs a streams file (--streams-file or STREAMSEG_STREAMS_FILE)",
            )
        if stream_id is None:
            raise PersistRefused(422, "id_required", "a persisted stream needs an `id`")
        if redact(url) not in (url, UNPARSABLE):  # an unparsable one fails as bad_url
            raise PersistRefused(
                422,
                "secret_in_url",
                "the URL carries a password or secret; it is not written to the streams "
                "file: add the stream to the file by hand with a ${VARIABLE} placeholder",
            )
        return StreamDefinition(stream_id, escape(url), url, name, dict(options))

    async def save(self, definition: StreamDefinition) -> None:
        """Add `definition` to the file (replacing one with its id)."""
        await self._rewrite(lambda current: with_stream(current, definition))

    async def forget(self, stream_id: str) -> bool:
        """Remove a stream from the file; False when it was not there."""
        found = False

        def change(current: list[StreamDefinition]) -> list[StreamDefinition]:
            nonlocal found
            found = any(d.id == stream_id for d in current)
            return without_stream(current, stream_id)

        await self._rewrite(change)
        return found

    async def _rewrite(
        self, change: Callable[[list[StreamDefinition]], list[StreamDefinition]]
    ) -> None:
        """Re-read the file (an operator may have edited it), apply `change`, write it
        back atomically; one rewrite at a time. A file that no longer parses is left
        alone (StreamsFileError), never overwritten."""
        path = self.path
        if path is None:
            raise PersistRefused(409, "no_streams_file", "this server has no streams file")
        async with self._lock:

            def rewrite() -> list[StreamDefinition]:
                text = read_text(path)
                current = [] if text is None else self.parse(text)
                updated = change(current)
                write_atomic(path, dump_streams_file(updated))
                return updated

            updated = await asyncio.to_thread(rewrite)
            self.definitions = updated

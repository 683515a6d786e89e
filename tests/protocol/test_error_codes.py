"""One error-code table for every surface: the REST layer's codes, the tracker's and
the protocol's all come from it, with one HTTP status each."""

from __future__ import annotations

import pytest

from streamseg.model import errors as tracker_errors
from streamseg.protocol.error_codes import ERROR_CODES, PARSE_CODES, PROMPT_CODES, http_status
from streamseg.server import api_errors


def _tracker_codes() -> dict[str, type]:
    found: dict[str, type] = {}
    stack = [tracker_errors.TrackerError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        found[cls.code] = cls
    return found


def test_every_rest_code_is_in_the_table_with_its_status() -> None:
    tables = [api_errors.COMMON, *api_errors.ROUTE_ERRORS.values()]
    for table in tables:
        for status, codes in table.items():
            for code in codes:
                assert code in ERROR_CODES, code
                assert status in ERROR_CODES[code].statuses, (code, status)
    for status, code in api_errors.STATUS_CODES.items():
        assert status in ERROR_CODES[code].statuses, (code, status)


def test_every_tracker_code_a_client_can_meet_is_in_the_table() -> None:
    internal = {"tracker_error", "invalid_frame"}  # never reach a client: frames are ours
    assert set(_tracker_codes()) - internal <= set(ERROR_CODES)


def test_prompt_codes_are_the_parse_codes_and_the_trackers() -> None:
    assert set(PROMPT_CODES) >= PARSE_CODES - {"too_large"}
    assert {"out_of_frame", "future_frame", "invalid_prompt", "too_many_tracks"} <= set(
        PROMPT_CODES
    )
    assert api_errors.PROMPT_CODES == PROMPT_CODES


@pytest.mark.parametrize(
    ("code", "status"),
    [("too_large", 413), ("unknown_track", 404), ("no_frame_yet", 409), ("bad_field", 422),
     ("busy", 503), ("unknown_stream", 404), ("not_a_code", 422)],
)  # fmt: skip
def test_http_status(code: str, status: int) -> None:
    assert http_status(code) == status

"""A schemathesis check of this server's own contract, on top of all the built-in
ones (loaded by `tests/server/schemathesis.toml`).

Every refusal must be `{"detail": {"code", "message"}}` with a code that the
operation's OpenAPI lists for that status (`x-error-codes`). A schema-valid request
may still be refused, but only for a reason no JSON Schema can state (the bytes are
not an image, a point lies outside it, the source policy refuses a URL, the SDP has
no video); `positive_data_acceptance` is told those statuses per operation in the
config, and this check makes sure such a refusal carries one of those reasons and
never `bad_json`, `bad_field` on a single field, or another code a schema covers."""

from __future__ import annotations

from typing import Any

import schemathesis

# Semantic refusals of schema-valid requests, per operation: (status, code).
PROMPT_SEMANTICS = {
    (422, "out_of_frame"),  # a point or box corner outside the image or frame
    (422, "bad_field"),  # one label per point; x0 < x1 and y0 < y1 in a box
}
SEMANTIC: dict[tuple[str, str], set[tuple[int, str]]] = {
    ("POST", "/v1/streams"): {(422, "bad_url"), (422, "id_required"), (422, "secret_in_url")},
    ("POST", "/v1/webrtc/offer"): {(400, "bad_offer")},
    ("POST", "/v1/segment"): {
        (413, "too_large"),
        (415, "not_an_image"),
        *PROMPT_SEMANTICS,
        # image_url: what the URL answers (or not), or where it redirects
        (422, "bad_url"),
        (422, "fetch_failed"),
        (422, "redirect_refused"),
        (422, "timeout"),
    },
    ("POST", "/v1/images"): {(413, "too_large"), (415, "not_an_image")},
    ("POST", "/v1/images/{image_id}/segment"): PROMPT_SEMANTICS,
    ("POST", "/v1/streams/{stream_id}/prompts"): {
        *PROMPT_SEMANTICS,
        (422, "future_frame"),  # a frame this stream has not received
        (422, "invalid_prompt"),  # a box added to earlier points on a frame
        (422, "too_many_points"),  # accumulated over several prompts on one frame
        (422, "too_many_tracks"),
    },
}
# `bad_field` on schema-valid data only for the rules across fields.
BAD_FIELD_MEANINGS = ("one label per point", "x0 < x1 and y0 < y1")


def _documented_codes(case: Any, status: int) -> list[str] | None:
    responses = case.operation.definition.raw.get("responses", {})
    answer = responses.get(str(status))
    return None if answer is None else list(answer.get("x-error-codes", []))


@schemathesis.check
def refusals_keep_the_contract(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status < 400 or (case.path == "/readyz" and status == 503):
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{status} is not JSON: {response.text[:200]!r}") from None
    detail = body.get("detail") if isinstance(body, dict) else None
    if not (
        isinstance(detail, dict)
        and isinstance(detail.get("code"), str)
        and isinstance(detail.get("message"), str)
    ):
        raise AssertionError(f"{status} is not the error shape: {body!r}")
    code = detail["code"]
    if status != 405:  # method not allowed: not an operation's own answer
        documented = _documented_codes(case, status)
        if documented is not None and code not in documented:
            raise AssertionError(f"{status} `{code}` is not among the documented {documented}")
    meta = getattr(case, "meta", None)
    positive = meta is not None and meta.generation.mode.is_positive
    if positive and status in (400, 413, 415, 422):
        allowed = SEMANTIC.get((case.method.upper(), case.path), set())
        if (status, code) not in allowed:
            raise AssertionError(
                f"a schema-valid request was refused with {status} `{code}` "
                f"({detail['message']}); only {sorted(allowed)} are beyond a schema"
            )
        if code == "bad_field" and not any(m in detail["message"] for m in BAD_FIELD_MEANINGS):
            raise AssertionError(f"bad_field on schema-valid data: {detail['message']}")
    return None

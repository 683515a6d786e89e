"""The published protocol next to /openapi.json: the AsyncAPI document of the websocket
feed and the data channel, and each message's JSON Schema, as committed under
docs/protocol/ (generated from the same models the server decodes with).

Unlike /openapi.json (open, so /docs works in a browser without a token), these need
the `view` scope: they describe the feeds a `view` token opens, and a surface added
since the open ones were chosen is authenticated (docs/SECURITY.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse

from streamseg.server.security import requires

router = APIRouter(prefix="/v1/protocol", tags=["protocol"])


def _published() -> Any:
    """Built on the first request (msgspec generates the schemas), not at start-up."""
    from streamseg.protocol.publish import published_documents

    return published_documents()


def _json(document: dict[str, Any]) -> JSONResponse:
    return JSONResponse(document, headers={"Cache-Control": "no-cache"})


@router.get(
    "/asyncapi.json",
    dependencies=[requires("view")],
    summary="AsyncAPI 3.0 document of the websocket mask feed and the WebRTC data channel",
    response_description="The AsyncAPI document (docs/protocol/asyncapi.json)",
)
async def asyncapi() -> JSONResponse:
    return _json(_published().asyncapi)


@router.get(
    "/schemas/{name}.json",
    dependencies=[requires("view")],
    summary="JSON Schema (2020-12) of one wire message",
    response_description="The message's schema (docs/protocol/schemas/{name}.json)",
)
async def message_schema(name: str) -> JSONResponse:
    schemas = _published().schemas
    if name not in schemas:
        known = ", ".join(sorted(schemas))
        raise HTTPException(
            404, {"code": "unknown_schema", "message": f"no schema {name[:64]!r}; known: {known}"}
        )
    return _json(schemas[name])

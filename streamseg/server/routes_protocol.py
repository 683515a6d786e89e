"""The published protocol next to /openapi.json: the AsyncAPI document of the websocket
feed and the data channel, and each message's JSON Schema, byte for byte the files
committed under docs/protocol/ (generated from the same models the server decodes with).

Unlike /openapi.json (open, so /docs works in a browser without a token), these need
the `view` scope: they describe the feeds a `view` token opens, and a surface added
since the open ones were chosen is authenticated (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from streamseg.protocol.asyncapi import render
from streamseg.protocol.publish import published_documents
from streamseg.server.security import requires

router = APIRouter(prefix="/v1/protocol", tags=["protocol"])
ASYNCAPI = "asyncapi"  # its key among the rendered documents; no message has that name


@functools.cache
def _rendered() -> dict[str, bytes]:
    """Every document as its committed file's bytes, rendered once (tens of ms: run off
    the event loop)."""
    documents = published_documents()
    out = {name: render(schema).encode() for name, schema in documents.schemas.items()}
    out[ASYNCAPI] = render(documents.asyncapi).encode()
    return out


async def _documents() -> dict[str, bytes]:
    return await asyncio.to_thread(_rendered)


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


@router.get(
    "/asyncapi.json",
    dependencies=[requires("view")],
    summary="AsyncAPI 3.0 document of the websocket mask feed and the WebRTC data channel",
    response_description="The AsyncAPI document (docs/protocol/asyncapi.json)",
)
async def asyncapi() -> Response:
    return _json((await _documents())[ASYNCAPI])


@router.get(
    "/schemas/{name}.json",
    dependencies=[requires("view")],
    summary="JSON Schema (2020-12) of one wire message",
    response_description="The message's schema (docs/protocol/schemas/{name}.json)",
)
async def message_schema(name: str) -> Response:
    documents = await _documents()
    body = None if name == ASYNCAPI else documents.get(name)
    if body is None:
        known = ", ".join(sorted(set(documents) - {ASYNCAPI}))
        raise HTTPException(
            404, {"code": "unknown_schema", "message": f"no schema {name[:64]!r}; known: {known}"}
        )
    return _json(body)

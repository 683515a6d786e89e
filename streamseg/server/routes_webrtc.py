"""POST /v1/webrtc/offer: a browser or client sends video and gets overlays back."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from streamseg.media.webrtc import OfferError, PeerOptions, answer_offer
from streamseg.pipeline.stream import MAX_INTERVAL
from streamseg.server.api_errors import JsonInt
from streamseg.server.errors import StrictJSONRoute
from streamseg.server.runtime import LimitReachedError, Runtime
from streamseg.server.security import audit_note, requires

router = APIRouter(prefix="/v1/webrtc", tags=["webrtc"], route_class=StrictJSONRoute)


class OfferOptions(BaseModel):
    overlay: bool = True
    metadata: bool = True
    masks_in_metadata: bool = False
    # "source": every camera frame comes back, newest masks moved onto it; "model": one
    # frame per model result.
    rate: Literal["source", "model"] = "source"
    # Run the model on every Nth frame only; the video still comes back at source rate.
    interval: JsonInt = Field(default=1, ge=1, le=MAX_INTERVAL, strict=True)


class Offer(BaseModel):
    sdp: str = Field(max_length=64 * 1024)
    type: Literal["offer"]
    options: OfferOptions = Field(default_factory=OfferOptions)


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    stream_id: str
    peer_id: str


@router.post("/offer", response_model=Answer, dependencies=[requires("control")])
async def offer(body: Offer, request: Request) -> Answer:
    runtime: Runtime = request.app.state.runtime
    if not runtime.ready:
        message = "the model is still loading; retry when /readyz is 200"
        raise HTTPException(503, {"code": "not_ready", "message": message})
    peers = sum(1 for s in runtime.streams.values() if s.kind == "webrtc")
    if peers >= runtime.settings.max_peers:
        runtime.metrics.requests_rejected.labels("max_peers").inc()
        message = f"at most {runtime.settings.max_peers} WebRTC peers at once"
        raise HTTPException(429, {"code": "limit", "message": message})
    try:
        answer, peer = await answer_offer(
            runtime, runtime.media_executor(), body.sdp, PeerOptions(**body.options.model_dump())
        )
    except OfferError as exc:
        runtime.metrics.requests_rejected.labels("bad_offer").inc()
        raise HTTPException(400, {"code": "bad_offer", "message": str(exc)}) from None
    except LimitReachedError as exc:
        runtime.metrics.requests_rejected.labels("max_streams").inc()
        raise HTTPException(429, {"code": "limit", "message": str(exc)}) from None
    audit_note(request, stream=peer.stream.id, peer=peer.id)
    return Answer(sdp=answer.sdp, stream_id=peer.stream.id, peer_id=peer.id)

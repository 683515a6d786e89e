"""Wire formats: pure, sans-I/O code shared by every surface, the tracker and the client.

`masks` holds the mask codecs, `messages` what the server sends, `prompts` what clients
send (validated). Nothing here touches sockets or an event loop, so it is tested on bytes.
"""

from streamseg.protocol.masks import (
    MaskCodecError,
    MaskEncoding,
    decode_mask,
    encode_mask,
    mask_area,
    mask_bbox,
    rle_decode,
    rle_encode,
)
from streamseg.protocol.messages import (
    SCHEMA_VERSION,
    FrameResultMessage,
    FrameTimes,
    MessageError,
    TrackResultMeta,
    ack_message,
    decode_frame_json,
    decode_frame_message,
    encode_frame_message,
    encode_masks,
    error_message,
    frame_message_json,
    hello_message,
    parse_server_text,
)
from streamseg.protocol.prompts import (
    AddPrompt,
    ClientMessage,
    PromptError,
    PromptLimits,
    RemoveTrack,
    ResetTracks,
    SetOptions,
    check_prompt_in_frame,
    parse_client_message,
    peek_request_id,
)

__all__ = [
    "SCHEMA_VERSION",
    "AddPrompt",
    "ClientMessage",
    "FrameResultMessage",
    "FrameTimes",
    "MaskCodecError",
    "MaskEncoding",
    "MessageError",
    "PromptError",
    "PromptLimits",
    "RemoveTrack",
    "ResetTracks",
    "SetOptions",
    "TrackResultMeta",
    "ack_message",
    "check_prompt_in_frame",
    "decode_frame_json",
    "decode_frame_message",
    "decode_mask",
    "encode_frame_message",
    "encode_mask",
    "encode_masks",
    "error_message",
    "frame_message_json",
    "hello_message",
    "mask_area",
    "mask_bbox",
    "parse_client_message",
    "parse_server_text",
    "peek_request_id",
    "rle_decode",
    "rle_encode",
]

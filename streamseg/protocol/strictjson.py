"""The one JSON parser for everything a client sends (REST bodies, websocket and
data-channel messages): plain JSON only, bounded in the ways `json.loads` is not.

`json.loads` accepts `NaN` and `Infinity` (which no other JSON parser sends and which
cannot be written back into a JSON error), recurses once per nesting level until the
interpreter's limit, and turns a 5000-digit integer into a `ValueError` of its own.
Each of these is refused here as a `JSONRefused`, a `ValueError` with a message a
client can act on; callers answer it with code `bad_json`.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

MAX_DEPTH = 32
"""Nesting of arrays and objects; streamseg's own messages need 4."""
MAX_INT_DIGITS = 32
"""Digits of one integer; the largest the protocol accepts (a frame seq) has 19."""


class JSONRefused(ValueError):
    """The text is not JSON, or is JSON this server does not accept."""


def _constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not a JSON number; numbers must be finite")


def _integer(text: str, max_digits: int) -> int:
    digits = len(text) - text.startswith("-")
    if digits > max_digits:
        raise JSONRefused(f"an integer has {digits} digits; at most {max_digits} are accepted")
    return int(text)


def _real(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"the number {text[:40]} is too large; numbers must be finite")
    return value


def too_deep(value: Any, max_depth: int) -> bool:
    """Iterative, so a check can never exceed the stack it guards."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


@functools.lru_cache(maxsize=8)
def _decoder(max_int_digits: int) -> json.JSONDecoder:
    return json.JSONDecoder(
        parse_constant=_constant,
        parse_int=lambda s: _integer(s, max_int_digits),
        parse_float=_real,
    )


def loads(
    raw: str | bytes | bytearray | memoryview,
    *,
    max_depth: int = MAX_DEPTH,
    max_int_digits: int = MAX_INT_DIGITS,
) -> Any:
    """Parse `raw` (UTF-8 when bytes) or raise `JSONRefused`."""
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise JSONRefused("not valid JSON: the text is not UTF-8") from None
    try:
        value = _decoder(max_int_digits).decode(text)
    except RecursionError:
        raise JSONRefused(f"nested more than {max_depth} levels deep") from None
    except json.JSONDecodeError as exc:
        raise JSONRefused(f"not valid JSON: {exc}") from None
    if isinstance(value, dict | list) and max_depth >= 1 and too_deep(value, max_depth):
        raise JSONRefused(f"nested more than {max_depth} levels deep")
    return value

"""The published protocol served next to /openapi.json (server/routes_protocol.py):
against the real server on loopback with httpx, tokens from a token file. The
documents need the `view` scope, equal the committed files, and are in OpenAPI with
their error codes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from streamseg.protocol.publish import PUBLISHED_DIR, REPO, SCHEMAS_DIR
from streamseg.server.background import running_server

VIEWER = "viewer-secret-aaaaaaaaaaaaaaaa"
SCRAPER = "metrics-secret-dddddddddddddddddd"
TOKEN_FILE = f"viewer view {VIEWER}\nprometheus metrics {SCRAPER}\n"
ROUTES = ("/v1/protocol/asyncapi.json", "/v1/protocol/schemas/frame_header.json")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(TOKEN_FILE)
    tokens.chmod(0o600)
    with running_server(token_file=str(tokens)) as (base, _):
        yield base


def _get(url: str, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url + path, headers=headers, timeout=30)


def _code(response: httpx.Response) -> str:
    code: str = response.json()["detail"]["code"]
    return code


@pytest.mark.parametrize("path", ROUTES)
def test_a_view_token_is_needed(url: str, path: str) -> None:
    missing = _get(url, path)
    assert missing.status_code == 401 and _code(missing) == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert _code(_get(url, path, "not-a-token-eeeeeeeeeeeeeeeee")) == "unauthorized"
    wrong_scope = _get(url, path, SCRAPER)
    assert wrong_scope.status_code == 403 and _code(wrong_scope) == "forbidden"
    assert _get(url, path, VIEWER).status_code == 200


def test_served_documents_are_the_committed_ones(url: str) -> None:
    served = _get(url, "/v1/protocol/asyncapi.json", VIEWER)
    assert served.headers["content-type"] == "application/json"
    assert served.content == (REPO / PUBLISHED_DIR / "asyncapi.json").read_bytes()
    names = sorted(p.stem for p in (REPO / SCHEMAS_DIR).glob("*.json"))
    assert {"frame_header", "hello", "prompt", "client_message"} <= set(names)
    for name in names:
        schema = _get(url, f"/v1/protocol/schemas/{name}.json", VIEWER)
        assert schema.status_code == 200, name
        assert schema.content == (REPO / SCHEMAS_DIR / f"{name}.json").read_bytes()


def test_an_unknown_schema_is_404_naming_the_known_ones(url: str) -> None:
    for name in ("frame", "asyncapi"):
        missing = _get(url, f"/v1/protocol/schemas/{name}.json", VIEWER)
        assert missing.status_code == 404 and _code(missing) == "unknown_schema"
        assert "frame_header" in missing.json()["detail"]["message"]


def test_openapi_lists_the_routes_and_their_refusals(url: str) -> None:
    paths = _get(url, "/openapi.json").json()["paths"]
    for path in ROUTES:
        template = path if path.endswith("asyncapi.json") else "/v1/protocol/schemas/{name}.json"
        answers = paths[template]["get"]["responses"]
        assert answers["401"]["x-error-codes"] == ["unauthorized"]
        assert "forbidden" in answers["403"]["x-error-codes"]
    schema_answers = paths["/v1/protocol/schemas/{name}.json"]["get"]["responses"]
    assert schema_answers["404"]["x-error-codes"] == ["unknown_schema"]

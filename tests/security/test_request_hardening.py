"""Hostile requests against the live app (real HTTP port, PostgreSQL query log, Redis, the served index):
bodies are refused before they are read, text with control characters or broken Unicode is a 422 (never
a 500), uploads keep every file under a safe unique name, and error bodies match the OpenAPI schema."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from rag_serving.app import create_app
from tests.serving_server import ServerThread

pytestmark = pytest.mark.slow


def answer_before_the_body(url: str, head: list[str], body_start: bytes, timeout_s: float = 15) -> tuple[int, dict]:
    """Send the request line, headers and only the first bytes of the body, then read the reply. A reply
    at all proves the server answered without reading the body: the rest of it is never sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as connection:
        connection.sendall("\r\n".join([*head, "", ""]).encode() + body_start)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            assert chunk, f"the server closed the connection without a reply: {received!r}"
            received += chunk
        header_block, _, body = received.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            body += connection.recv(65536)
    return int(lines[0].split()[1]), json.loads(body)


def head_of(method: str, path: str, length: int, content_type: str, key: str | None = None) -> list[str]:
    head = [f"{method} {path} HTTP/1.1", "Host: test", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    return head + ([f"X-API-Key: {key}"] if key else [])


# ---- 4. the key before the body, and a cap on every body


@pytest.mark.parametrize("key", [None, "rag_nope_nope"], ids=["no key", "bad key"])
def test_a_request_without_a_valid_key_gets_401_before_its_body_is_read(hardened, key):
    json_head = head_of("POST", "/v1/retrieve", 300_000_000, "application/json", key)
    status, body = answer_before_the_body(hardened.url, json_head, b"{not json at all")
    assert status == 401 and body["detail"], body  # before the fix: 422, after parsing 300 MB
    upload_head = head_of("POST", "/v1/documents", 1_000_000_000, "multipart/form-data; boundary=b", key)
    status, body = answer_before_the_body(hardened.url, upload_head, b'--b\r\nContent-Disposition: form-data; name="')
    assert status == 401, body  # before the fix: the whole gigabyte was spooled to disk first
    with hardened.client(key or "") as client:
        response = client.post("/v1/retrieve", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def test_a_body_over_the_route_cap_gets_413_before_it_is_read(hardened):
    json_cap, upload_cap = hardened.settings.max_request_bytes, hardened.settings.upload_max_mb * 1e6
    head = head_of("POST", "/v1/retrieve", json_cap + 1, "application/json", hardened.key)
    status, body = answer_before_the_body(hardened.url, head, b'{"query": "')
    assert status == 413 and f"{json_cap:,} byte limit" in body["detail"]
    head = head_of("POST", "/v1/documents", 1_000_000_000, "multipart/form-data; boundary=b", hardened.key)
    assert answer_before_the_body(hardened.url, head, b"--b\r\n")[0] == 413
    with hardened.client() as client:
        # an upload may be larger than a JSON body: its own cap (RAG_UPLOAD_MAX_MB) applies
        allowed = client.post("/v1/documents", files={"file": ("big-enough.txt", b"x" * (json_cap * 2))})
        assert allowed.status_code == 202, allowed.text
        too_big = client.post("/v1/documents", files={"file": ("too-big.txt", b"x" * int(upload_cap + 1))})
        assert too_big.status_code == 413, too_big.text
    assert not (hardened.documents / "too-big.txt").exists()
    assert not [path for path in hardened.documents.iterdir() if path.name.endswith(".uploading")]


def test_a_chunked_body_is_counted_while_it_streams_in(hardened):
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(8):
            yield b"a" * 64_000  # no Content-Length: httpx sends a chunked body

    with hardened.client() as client:
        response = client.post("/v1/retrieve", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text
        assert set(response.json()) == {"detail"}
        assert client.post("/v1/retrieve", json={"query": "sensor"}).status_code == 200  # the connection recovers


# ---- 6. control characters (NUL) are refused at the schema: never 500 from PostgreSQL


@pytest.mark.parametrize(
    "path, payload",
    [
        ("/v1/retrieve", {"query": "embedding\u0000cache"}),
        ("/v1/query", {"query": "embedding\u0000cache"}),
        ("/v1/query", {"query": "embedding\u0000cache", "stream": True}),
        ("/v1/query", {"query": "embedding\u001bcache"}),
        ("/v1/retrieve", {"query": "cache", "filters": {"title": "a\u0000b"}}),
        ("/v1/feedback", {"query_id": "a\u0000", "rating": 3}),
    ],
)
def test_control_characters_in_a_body_get_422(hardened, path, payload):
    with hardened.client() as client:
        response = client.post(path, json=payload)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"  # not a 200 stream that stops
    assert response.json()["errors"][0]["type"] == "string_pattern_mismatch"


def test_control_characters_in_a_feedback_comment_or_a_path_get_422(hardened):
    with hardened.client() as client:
        query_id = client.post("/v1/retrieve", json={"query": "embedding cache"}).json()["query_id"]
        comment = client.post("/v1/feedback", json={"query_id": query_id, "comment": "good\u0000 answer"})
        assert comment.status_code == 422, comment.text
        for method in ("GET", "DELETE"):
            response = client.request(method, "/v1/documents/%00")
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["loc"] == ["path", "doc_id"]
        # line breaks and tabs are text, not control characters: a comment may have them
        accepted = client.post("/v1/feedback", json={"query_id": query_id, "comment": "good\n\tanswer", "rating": 4})
        assert accepted.status_code == 201, accepted.text


# ---- 7. non-ASCII text works; broken Unicode is a 422


def test_non_ascii_filters_and_queries_are_searched(hardened):
    with hardened.client() as client:
        for mode in ("dense", "bm25", "hybrid"):
            response = client.post(
                "/v1/retrieve", json={"query": "café crème — ünïcode", "mode": mode, "filters": {"title": "Café"}}
            )
            assert response.status_code == 200, response.text  # before the fix: Milvus refused `"Caf\u00e9"`
            assert response.json()["chunks"] == []
        ascii_title = client.post("/v1/retrieve", json={"query": "sensor", "top_k": 1}).json()["chunks"][0]["title"]
        found = client.post("/v1/retrieve", json={"query": "sensor", "filters": {"title": [ascii_title, "Zürich"]}})
        assert found.status_code == 200 and {c["title"] for c in found.json()["chunks"]} == {ascii_title}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"query": "a\\ud800b"}',  # a lone surrogate, escaped
        b'{"query": "cache", "filters": {"title": "\\udfff"}}',
        b'{"query": "cache", "filters": {"\\ud800": "x"}}',  # in a key: echoed in the error's `loc`
        b'{"query": "caf\xe9"}',  # Latin-1, not UTF-8
        b'{"query": "a\xed\xa0\x80b"}',  # a surrogate encoded as UTF-8 bytes
        b'{"query": "\xff\xfe"}',
    ],
)
def test_broken_unicode_gets_422(hardened, raw):
    with hardened.client() as client:
        for path in ("/v1/retrieve", "/v1/query"):
            response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (path, response.text)
            body = response.json()
            assert body["detail"] and isinstance(body["errors"], list)


# ---- 12. upload names: safe, unique, capped; every file of a request


def stored(hardened, response) -> dict[str, bytes]:
    assert response.status_code == 202, response.text
    return {doc["filename"]: (hardened.documents / doc["source"]).read_bytes() for doc in response.json()["documents"]}


def test_long_names_are_capped_keeping_the_extension(hardened):
    long_name = "n" * 300 + ".md"
    with hardened.client() as client:
        response = client.post("/v1/documents", files={"file": (long_name, b"# Long\n\nA long name.")})
    assert stored(hardened, response) == {long_name: b"# Long\n\nA long name."}  # before the fix: 500
    source = response.json()["documents"][0]["source"]
    digest = hashlib.sha256(long_name.encode()).hexdigest()[:10]
    assert len(source.encode()) <= 200 and source.endswith(f"-{digest}.md")


def test_different_names_never_collapse_into_one_file(hardened):
    names = ["Café.md", "Cafè.md", "Caf_.md", "résumé 2024.txt", "../../escape.md", ".hidden.md", "ok name.md"]
    with hardened.client() as client:
        response = client.post("/v1/documents", files=[("file", (name, f"# {name}".encode())) for name in names])
    assert stored(hardened, response) == {name: f"# {name}".encode() for name in names}
    sources = [doc["source"] for doc in response.json()["documents"]]
    assert len(set(sources)) == len(names)
    assert "Caf_.md" in sources and "ok name.md" in sources  # names that are already safe stay as they are
    assert all(s.isascii() and "/" not in s and not s.startswith(".") for s in sources)
    assert {p.name for p in hardened.documents.iterdir()} >= set(sources)


def test_one_refused_file_refuses_the_whole_request(hardened):
    before = sorted(p.name for p in hardened.documents.iterdir())
    with hardened.client() as client:
        empty = client.post("/v1/documents", files=[("file", ("good-one.md", b"# ok")), ("file", ("bad.md", b"  "))])
        assert empty.status_code == 422 and "bad.md" in empty.json()["detail"]
        twice = client.post("/v1/documents", files=[("file", ("same.md", b"# one")), ("file", ("same.md", b"# two"))])
        assert twice.status_code == 422 and "same.md" in twice.json()["detail"]
        wrong_type = client.post("/v1/documents", files=[("file", ("fine.md", b"# ok")), ("file", ("x.exe", b"MZ"))])
        assert wrong_type.status_code == 415
    assert sorted(p.name for p in hardened.documents.iterdir()) == before  # no file, no temporary left


# ---- 13. the OpenAPI contract: limits in the schema, error bodies as declared


def test_the_schema_states_the_limits_of_this_app(hardened):
    with hardened.client() as client:
        spec = client.get("/openapi.json").json()
        schemas = spec["components"]["schemas"]
        retrieve = schemas["RetrieveRequest"]["properties"]
        assert retrieve["top_k"]["maximum"] == hardened.settings.max_top_k == 20
        assert retrieve["query"]["maxLength"] == 500 and retrieve["query"]["minLength"] == 1
        assert "pattern" in retrieve["query"]
        assert retrieve["filters"]["propertyNames"]["enum"] == ["doc_id", "source", "source_key", "title"]
        over = client.post("/v1/retrieve", json={"query": "sensor", "top_k": 21})
        assert over.status_code == 422 and over.json()["errors"][0]["loc"] == ["body", "top_k"]
        assert client.post("/v1/retrieve", json={"query": "x" * 501}).status_code == 422
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            success = next(code for code in responses if code.startswith("2"))
            content = responses[success].get("content", {}).get("application/json", {})
            if path.startswith("/v1/"):
                assert content.get("schema", {}).get("$ref"), (method, path)  # a typed model, not a bare dict
                assert {"401", "422"} <= set(responses) or not operation.get("parameters") and method == "get"
            for code in set(responses) - {"200", "201", "202"}:
                ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in {"ErrorBody", "ValidationErrorBody"}, (method, path, code)


def test_error_bodies_match_the_declared_models(hardened):
    with hardened.client() as client:
        invalid = client.post("/v1/retrieve", json={"query": "", "mode": "magic"}).json()
        assert isinstance(invalid["detail"], str) and len(invalid["errors"]) == 2
        assert {tuple(e["loc"]) for e in invalid["errors"]} == {("body", "query"), ("body", "mode")}
        refused = client.post("/v1/feedback", json={"query_id": "nope"}).json()
        assert refused == {"detail": "give a rating, is_relevant or a comment", "errors": []}
        assert set(client.get("/v1/documents/nope").json()) == {"detail"}
    with hardened.client("") as anonymous:
        assert set(anonymous.get("/v1/feedback/analytics").json()) == {"detail"}


# ---- 6. a stream that fails part-way ends with an `error` event


class PathologicalLLM(CustomLLM):
    """An LLM (a litellm provider) whose stream breaks after the first deltas went out, as a provider that
    drops the connection mid-answer does."""

    def streaming(self, model: str, messages: list, *args, **kwargs) -> Iterator[GenericStreamingChunk]:
        for word in ("The ", "sensor ", "indexes "):
            yield GenericStreamingChunk(
                text=word, is_finished=False, finish_reason="", usage=None, index=0, tool_use=None
            )
        raise ConnectionResetError("the provider dropped the connection mid-answer")


@pytest.fixture(scope="module")
def pathological(hardened):
    import litellm

    litellm.custom_provider_map = [
        *litellm.custom_provider_map,
        {"provider": "pathological", "custom_handler": PathologicalLLM()},
    ]
    settings = hardened.settings.model_copy(update={"llm_model": "pathological/citations"})
    server = ServerThread(create_app(settings)).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_stream_whose_provider_fails_part_way_still_ends_with_a_terminal_event(pathological, hardened):
    question = {"query": "What does the sensor do?", "stream": True}
    with pathological.client(hardened.key) as client, client.stream("POST", "/v1/query", json=question) as response:
        assert response.status_code == 200
        events = [block for block in response.read().decode().split("\n\n") if block]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert names[0] == "sources" and names.count("delta") == 3, names
    assert names[-1] == "done", names  # the answer degrades to its sources, with the reason
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert done["degraded"]
    assert done["reason"].endswith("ConnectionResetError: the provider dropped the connection mid-answer")
    assert "Traceback" not in done["reason"] and "File " not in done["reason"]  # no server paths to the client


def test_a_stream_that_fails_in_our_code_ends_with_an_error_event():
    from rag_serving.routers.query import _ending_with_error

    def events():
        yield "event: sources\ndata: []\n\n"
        raise ValueError("a bug after the status line went out")

    sent = list(_ending_with_error(events()))
    assert sent[0].startswith("event: sources") and sent[-1].startswith("event: error")
    assert "ask again" in sent[-1]

"""Request body caps at the ASGI layer: nothing reads more of a body than its route allows.

The cap is checked when the app first reads the body, not when the request arrives: routes that need an
API key check it before reading (`deps.KeyFirstRoute`), so a request without a valid key gets its 401
without a byte of its body read, whatever its size."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing around the files of an upload (boundaries, part headers): allowed on top of the file bytes.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    """413. An HTTPException, so FastAPI's body parsing passes it on instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit:,} byte limit of this route")


class RequestBodyLimit:
    """Pure ASGI middleware. A declared Content-Length over the cap is refused (413) at the first read,
    before any body byte is received; a chunked body is counted while it streams in and refused the
    moment it passes the cap. `route_limits` maps (method, path) to a cap; other routes get `default_limit`."""

    def __init__(self, app: ASGIApp, default_limit: int, route_limits: Mapping[tuple[str, str], int]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.route_limits = dict(route_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.route_limits.get((scope["method"], scope["path"]), self.default_limit)
        declared = _content_length(scope)
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge as error:  # raised outside a route's own error handling (a middleware read the body)
            if response_started:
                raise
            await JSONResponse({"detail": error.detail}, status_code=413)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

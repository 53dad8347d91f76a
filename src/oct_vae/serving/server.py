"""Serve the ``oct_vae_scorer`` MLflow model: MLflow's own scoring server, hardened.

    python -m oct_vae.serve -m runs:/<run id>/oct_vae_scorer --host 127.0.0.1 --port 5001

The app is MLflow's (``mlflow.pyfunc.scoring_server.init``, what ``mlflow models serve``
runs under uvicorn): the same ``/invocations``, ``/ping``, ``/health`` and ``/version``,
request formats, answers and request timeout. Three things are added, which the model
cannot do because they happen before it runs, and which ``mlflow models serve`` has no
setting for (MLflow 3.17):

* A body limit. MLflow reads the whole body (``await request.body()``), then parses it,
  and neither MLflow's server nor uvicorn can limit its size. Here a POST body over the
  limit is answered HTTP 413 without being kept in memory: refused from its
  ``Content-Length``, or counted as it streams in. The default limit follows the model's
  own ``score.max_request_bytes`` (1.25 times it plus 1 MiB, for the JSON around the
  base64: keys, ids, escaped line breaks); the model then refuses a request with more
  base64 than ``score.max_request_bytes`` itself (HTTP 400).
* HTTP 400, not 500, for a JSON body that Python's ``json`` cannot turn into objects:
  nested too deeply (``RecursionError``), holding an integer of more than 4300 digits
  (``ValueError``) or not UTF-8. MLflow answers malformed JSON with a 400 itself, but
  the first two escape its ``/invocations`` handler as a 500. Here a body sent as
  ``application/json`` is parsed once before MLflow sees it (``json.loads``, as MLflow
  parses it, in a worker thread as MLflow does); one that raises any of these is answered
  400 here, and every other body (valid JSON, malformed JSON, CSV, ...) goes to MLflow
  unchanged, so any error after the parsing stays MLflow's (a 500 stays a 500).
* Short error messages: MLflow's message for malformed JSON quotes the whole body, so an
  error body over 8 KiB is cut to the start and end of each long text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from oct_vae.framework.adapters import kedro_mlflow as kedro_mlflow_adapter
from oct_vae.framework.adapters import mlflow as mlflow_adapter
from oct_vae.serving import scoring as serving

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Room for the JSON around the base64 text: the body may exceed score.max_request_bytes
# by a quarter and 1 MiB before it is refused unread.
BODY_SLACK_BYTES = 1 << 20
# How long the rest of a refused body is read (and dropped) so that the client sees the 413.
DRAIN_SECONDS = 10.0
# An error body longer than this is shortened (MLflow quotes a malformed body whole).
MAX_ERROR_BYTES = 8 << 10
# Characters kept at each end of a shortened text.
ERROR_TEXT_ENDS = 1000
_PARAM = "score.max_request_bytes"
# Frames of headroom for the JSON check (see unreadable_json): more than MLflow's parsing
# adds between its worker thread and json.loads.
STACK_MARGIN = 32

_logger = logging.getLogger("oct_vae.serving.server")  # not __main__ under `python -m`


def body_limit(max_request_bytes: int) -> int:
    """Largest request body read for a model with this ``score.max_request_bytes``."""
    return max_request_bytes + max_request_bytes // 4 + BODY_SLACK_BYTES


def model_max_request_bytes(model: Any) -> int | None:
    """``score.max_request_bytes`` as logged with the model, or ``None`` for a model logged
    before the parameter existed (or not by kedro-mlflow)."""
    try:
        value = kedro_mlflow_adapter.pipeline_model_parameter(model, _PARAM)
    except Exception:  # not a KedroPipelineModel
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def build_app(model: Any, max_body_bytes: int | None = None) -> RequestLimits:
    """MLflow's scoring app for ``model`` (a loaded ``PyFuncModel``), hardened (see the
    module). ``max_body_bytes`` defaults to :func:`body_limit` of the model's
    ``score.max_request_bytes``."""
    app = mlflow_adapter.scoring_app(model)
    if max_body_bytes is None:
        limit = model_max_request_bytes(model) or serving.MAX_REQUEST_BYTES
        max_body_bytes = body_limit(limit)
    return RequestLimits(app, max_body_bytes)


def unreadable_json(body: bytes) -> str | None:
    """Why Python's ``json`` cannot read ``body`` as MLflow would need it to (nested too
    deeply, an integer too long to convert, not UTF-8), or ``None``: it parses, or it is
    merely malformed JSON, which MLflow answers itself.

    The body is parsed ``STACK_MARGIN`` frames deeper than MLflow parses it, so that JSON
    nested just too deeply for MLflow's parser is refused here too (the nesting limit of
    ``json`` counts the Python frames below it).
    """
    try:
        _deeper(STACK_MARGIN, json.loads, body)
    except RecursionError:
        return "JSON nested too deeply"
    except json.JSONDecodeError:
        return None
    except ValueError as exc:  # UnicodeDecodeError; an integer of over 4300 digits
        return f"{type(exc).__name__}: {exc}"
    return None


def _deeper(frames: int, function: Callable[[bytes], Any], arg: bytes) -> Any:
    """``function(arg)``, called ``frames`` Python frames deeper than this call."""
    return function(arg) if frames <= 0 else _deeper(frames - 1, function, arg)


def _error_json(message: str, error_code: str = "BAD_REQUEST") -> bytes:
    """An error body in MLflow's format."""
    return json.dumps({"error_code": error_code, "message": message}).encode()


class RequestLimits:
    """ASGI middleware: the body limit and the short error messages (see the module)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _shorten_errors(send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(receive, send, f"{declared:,}")
            return
        body = await self._read_body(receive, send)
        if body is None:
            return  # refused, or the client left
        if _is_json(scope) and (reason := await asyncio.to_thread(unreadable_json, body)):
            message = (
                "Invalid input. The request body is not valid JSON that this server can "
                f"read ({reason})."
            )
            await _answer(send, 400, _error_json(message))
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body (at most the limit), or ``None`` when it was refused (413) or the
        client disconnected."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > self.max_body_bytes:
                chunks.clear()
                await self._refuse(receive, send, f"{size:,}" + (" or more" if more else ""), more)
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _refuse(self, receive: Receive, send: Send, what: str, more: bool = True) -> None:
        """Answer 413 to a body of ``what`` bytes; ``more``: the client is still sending."""
        # Read and drop the rest of the body for up to DRAIN_SECONDS, so that a client still
        # sending gets the answer rather than a reset connection.
        deadline = time.monotonic() + DRAIN_SECONDS
        while more and (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                break
            if message["type"] == "http.disconnect":
                return
            more = bool(message.get("more_body", False))
        _logger.info("refused a request body of %s bytes", what)
        body = _error_json(
            f"Invalid input. The request body is too large: {what} bytes, at most "
            f"{self.max_body_bytes:,} are read (1.25 x score.max_request_bytes + 1 MiB, or "
            "--max-body-bytes). Send fewer or smaller scans per request.",
            "REQUEST_LIMIT_EXCEEDED",
        )
        await _answer(send, 413, body, close=True)


async def _answer(send: Send, status: int, body: bytes, close: bool = False) -> None:
    """Send a whole JSON answer; ``close``: the connection closes after it."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_json(scope: Scope) -> bool:
    """Whether MLflow parses this request's body as JSON (its content type, as it reads it)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-type":
            mime = value.decode("latin-1").split(";")[0].strip()
            return mime == mlflow_adapter.JSON_CONTENT_TYPE
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _shorten_errors(send: Send) -> Send:
    """``send`` that cuts an error answer (status >= 400) over ``MAX_ERROR_BYTES``."""
    start: Message | None = None
    parts: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message  # held until the body is known
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(parts)
        if len(body) > MAX_ERROR_BYTES:
            body = _shorten(body)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _shorten(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return _cut(body.decode("utf-8", "replace")).encode()
    if not isinstance(data, dict):
        return _cut(body.decode("utf-8", "replace")).encode()
    return json.dumps({k: _cut(v) if isinstance(v, str) else v for k, v in data.items()}).encode()


def _cut(text: str) -> str:
    if len(text) <= 2 * ERROR_TEXT_ENDS:
        return text
    cut = len(text) - 2 * ERROR_TEXT_ENDS
    return f"{text[:ERROR_TEXT_ENDS]} [... {cut:,} characters cut ...] {text[-ERROR_TEXT_ENDS:]}"


def main(argv: list[str] | None = None) -> None:
    """Load the model, build the app and serve it with uvicorn (one worker)."""
    parser = argparse.ArgumentParser(
        prog="python -m oct_vae.serve",
        description="Serve an oct_vae_scorer MLflow model with MLflow's scoring server, "
        "plus a request body limit and HTTP 400 for JSON that cannot be parsed.",
    )
    parser.add_argument("-m", "--model-uri", required=True, help="runs:/<run id>/oct_vae_scorer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument(
        "-t", "--timeout", type=int, help="seconds per request (MLflow's default: 60)"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest request body read (default: 1.25 x the model's score.max_request_bytes "
        "+ 1 MiB)",
    )
    args = parser.parse_args(argv)

    import mlflow
    import uvicorn

    if args.timeout is not None:
        mlflow_adapter.set_request_timeout(args.timeout)
    model = mlflow.pyfunc.load_model(args.model_uri)
    app = build_app(model, args.max_body_bytes)
    # The one line per request of the model (oct_vae.pipelines.inference.nodes) and the
    # refusals above, under whatever configuration loading Kedro has set up.
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if logging.getLogger("oct_vae").level == logging.NOTSET:
        logging.getLogger("oct_vae").setLevel(logging.INFO)
    _logger.info("body limit: %s bytes", f"{app.max_body_bytes:,}")
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()

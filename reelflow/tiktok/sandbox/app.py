"""HTTP face of the TikTok sandbox: a Starlette app over :class:`SandboxState`, and its runners.

This module owns the wire: routes, the JSON envelope ``{data, error:{code, message, log_id}}``,
the flat OAuth error shape, Retry-After/Content-Range/X-Tt-Logid headers, streaming chunk PUTs
to disk, and where injected faults strike (never on ``/_sandbox/`` admin routes). It must not
decide anything about tokens, limits, chunk maths or statuses: every such call goes to
:class:`SandboxState` (looked up on the state at call time, so tests can spy on it).

``start_sandbox`` runs uvicorn in a daemon thread for tests; ``run_sandbox`` blocks (CLI).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reelflow.tiktok.sandbox.accounts import SCOPE_PUBLISH, SCOPE_UPLOAD
from reelflow.tiktok.sandbox.config import SandboxConfig
from reelflow.tiktok.sandbox.errors import OAuthError, SandboxError, new_log_id
from reelflow.tiktok.sandbox.faults import InjectedFault
from reelflow.tiktok.sandbox.oauth import AccessToken
from reelflow.tiktok.sandbox.state import SandboxState

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0
DROP_DRAIN_TIMEOUT_S = 5.0
UPLOAD_ROUTE = "/upload/video/"
Handler = Callable[[Request], Awaitable[Any]]


def _envelope(
    log_id: str,
    data: Any = None,
    *,
    status: int = 200,
    code: str = "ok",
    message: str = "",
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error = {"code": code, "message": message, "log_id": log_id}
    body = {"data": data if data is not None else {}, "error": error}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Tt-Logid": log_id})


def _error_response(exc: SandboxError, log_id: str) -> JSONResponse:
    return _envelope(
        log_id, status=exc.http_status, code=exc.code, message=exc.message, headers=exc.headers
    )


def _oauth_error(status: int, error: str, description: str, log_id: str) -> JSONResponse:
    body = {"error": error, "error_description": description, "log_id": log_id}
    return JSONResponse(body, status_code=status, headers={"X-Tt-Logid": log_id})


def _fault_response(fault: InjectedFault, log_id: str, *, oauth: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s else {}
    if oauth:
        error = "temporarily_unavailable" if fault.http_status == 429 else "server_error"
        response = _oauth_error(fault.http_status, error, "Injected sandbox fault.", log_id)
        response.headers.update(headers)
        return response
    code = "rate_limit_exceeded" if fault.http_status == 429 else "internal_error"
    return _envelope(
        log_id, status=fault.http_status, code=code, message="Injected fault.", headers=headers
    )


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return await request.json()
    except ValueError as exc:
        raise SandboxError(400, "invalid_params", "The request body is not valid JSON") from exc


async def _drain(request: Request) -> None:
    # Answering before the client has sent its body makes the kernel reset the socket, and the
    # client would see a connection error instead of our status; so read and discard it first.
    try:
        async for _ in request.stream():
            pass
    except (ClientDisconnect, RuntimeError):  # RuntimeError: the stream was already consumed
        pass


async def _drop_connection(request: Request, expected: int) -> None:
    """Read about half of the chunk, then abort the TCP connection without answering."""
    got = 0
    async for piece in request.stream():
        got += len(piece)
        if got >= expected // 2:
            break
    # ASGI has no "abort": reach uvicorn's transport through its receive callable.
    transport = getattr(getattr(request.receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("this server does not expose its transport; cannot drop connections")
    transport.abort()
    # Wait until uvicorn notices, so the response returned afterwards is silently discarded.
    async with asyncio.timeout(DROP_DRAIN_TIMEOUT_S):
        while (await request.receive())["type"] != "http.disconnect":
            pass


def build_app(state: SandboxState) -> Starlette:
    """The Starlette app serving the API, the upload URLs and the ``/_sandbox/`` admin routes."""
    put_locks: dict[str, asyncio.Lock] = {}

    def api(route: str, handler: Handler, *, oauth: bool = False) -> Route:
        """Wrap a handler with call counting, fault dice and error-to-response mapping."""

        async def endpoint(request: Request) -> Response:
            log_id = new_log_id()
            state.record_call(f"POST {route}")
            fault = state.roll_fault("oauth" if oauth else "api")
            if fault is not None and fault.kind != "lost_response":
                return _fault_response(fault, log_id, oauth=oauth)
            try:
                result = await handler(request)
            except SandboxError as exc:
                response: Response = _error_response(exc, log_id)
            except OAuthError as exc:
                response = _oauth_error(exc.http_status, exc.error, exc.description, log_id)
            else:
                if oauth:
                    response = JSONResponse(result, headers={"X-Tt-Logid": log_id})
                else:
                    response = _envelope(log_id, result)
            if fault is not None:  # processed, but the client never learns the outcome
                return _fault_response(fault, log_id, oauth=oauth)
            return response

        return Route(route, endpoint, methods=["POST"])

    def auth(request: Request, scopes: tuple[str, ...], bucket: str) -> AccessToken:
        route = request.url.path
        return state.authenticate(request.headers.get("authorization"), scopes, bucket, route)

    async def form(request: Request) -> dict[str, str]:
        return dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))

    async def oauth_token(request: Request) -> Any:
        return state.oauth_token(await form(request))

    async def oauth_revoke(request: Request) -> Any:
        state.oauth_revoke(await form(request))
        return {}  # [U] OA says "empty body"; {} keeps .json() working for clients

    async def creator_info(request: Request) -> Any:
        await request.body()
        return state.creator_info(auth(request, (SCOPE_PUBLISH,), "creator_info"))

    def init(mode: str, scope: str) -> Handler:
        async def handler(request: Request) -> Any:
            await request.body()
            token = auth(request, (scope,), "init")  # 401/429 before body validation
            base = str(request.base_url)
            return state.init_video(token, await _json_body(request), mode=mode, upload_base=base)

        return handler

    async def status_fetch(request: Request) -> Any:
        await request.body()
        token = auth(request, (SCOPE_PUBLISH, SCOPE_UPLOAD), "status")
        # ffprobe may run here (the upload's terminal status is decided lazily), so off the loop.
        return await run_in_threadpool(state.fetch_status, token, await _json_body(request))

    async def cancel(request: Request) -> Any:
        await request.body()
        token = auth(request, (SCOPE_PUBLISH, SCOPE_UPLOAD), "cancel")
        return state.cancel(token, await _json_body(request))

    async def upload(request: Request) -> Response:
        log_id = new_log_id()
        state.record_call(f"PUT {UPLOAD_ROUTE}")
        fault = state.roll_fault("upload")
        if fault is not None and fault.kind != "lost_response":
            await _drain(request)
            return _fault_response(fault, log_id)
        upload_id = request.query_params.get("upload_id", "")
        # Chunks of one upload are serialised; a concurrent PUT then sees the progress it made.
        async with put_locks.setdefault(upload_id, asyncio.Lock()):
            try:
                plan = state.begin_put(
                    upload_id, request.query_params.get("upload_token", ""), request.headers
                )
            except SandboxError as exc:
                await _drain(request)
                return _error_response(exc, log_id)
            if state.roll_drop():
                await _drop_connection(request, plan.length)
                return Response(status_code=500)  # discarded: the connection is already gone
            hasher, received = plan.hasher, 0
            with plan.path.open("r+b") as fh:
                fh.seek(plan.start)
                try:
                    async for piece in request.stream():
                        received += len(piece)
                        if received > plan.length:
                            break
                        hasher.update(piece)
                        fh.write(piece)
                except ClientDisconnect:
                    received = -1
                if received != plan.length:  # nothing of a partial chunk is kept
                    fh.truncate(plan.start)
                    if received < 0:
                        return Response(status_code=400)  # nobody is listening any more
                    await _drain(request)
                    return _envelope(
                        log_id,
                        status=400,
                        code="invalid_file_upload",
                        message="Content-Length does not match the body size",
                    )
            try:
                status, content_range = state.commit_put(plan, hasher)
            except SandboxError as exc:
                return _error_response(exc, log_id)
            if fault is not None:
                return _fault_response(fault, log_id)
            return _envelope(log_id, status=status, headers={"Content-Range": content_range})

    # ----- admin: no auth, no faults, not counted in stats ----------------------------------

    def admin(route: str, action: Callable[[Request, Any], Any], method: str = "POST") -> Route:
        async def endpoint(request: Request) -> Response:
            body = await _json_body(request) if method == "POST" else {}
            try:
                if not isinstance(body, dict):
                    raise SandboxError(400, "invalid_params", "body must be a JSON object")
                result = await run_in_threadpool(action, request, body)
            except SandboxError as exc:
                error = {"code": exc.code, "message": exc.message}
                return JSONResponse({"error": error}, exc.http_status)
            except KeyError as exc:  # a required body field is missing
                error = {"code": "invalid_params", "message": f"missing field {exc}"}
                return JSONResponse({"error": error}, 400)
            except (TypeError, ValueError) as exc:  # unknown or ill-typed body fields
                return JSONResponse({"error": {"code": "invalid_params", "message": str(exc)}}, 400)
            return JSONResponse(result if result is not None else {})

        return Route(route, endpoint, methods=[method])

    def open_id(request: Request) -> str:
        return str(request.path_params["open_id"])

    routes = [
        api("/v2/oauth/token/", oauth_token, oauth=True),
        api("/v2/oauth/revoke/", oauth_revoke, oauth=True),
        api("/v2/post/publish/creator_info/query/", creator_info),
        api("/v2/post/publish/video/init/", init("direct", SCOPE_PUBLISH)),
        api("/v2/post/publish/inbox/video/init/", init("inbox", SCOPE_UPLOAD)),
        api("/v2/post/publish/status/fetch/", status_fetch),
        api("/v2/post/publish/cancel/", cancel),
        Route(UPLOAD_ROUTE, upload, methods=["PUT"]),
        admin("/_sandbox/accounts", lambda r, b: state.create_account(**b)),
        admin("/_sandbox/accounts/{open_id}/policy", lambda r, b: state.set_policy(open_id(r), b)),
        admin(
            "/_sandbox/accounts/{open_id}/auth_code",
            lambda r, b: {"auth_code": state.issue_auth_code(open_id(r), b.get("redirect_uri"))},
        ),
        admin("/_sandbox/faults", lambda r, b: state.set_faults(b)),
        admin("/_sandbox/tokens/expire", lambda r, b: state.expire_access_token(b["access_token"])),
        admin("/_sandbox/tokens/revoke", lambda r, b: state.revoke_token(b["token"])),
        admin("/_sandbox/clock/advance", lambda r, b: state.advance_clock(b["seconds"])),
        admin("/_sandbox/stats", lambda r, b: state.stats(), method="GET"),
        admin("/_sandbox/reset", lambda r, b: state.reset()),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = "internal_error" if status >= 500 else "invalid_params"
        return _envelope(new_log_id(), status=status, code=code, message=str(exc))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


@dataclass
class RunningSandbox:
    """A sandbox serving in a background thread: where it listens and its live state."""

    base_url: str
    state: SandboxState
    server: uvicorn.Server
    thread: threading.Thread


def _uvicorn_config(state: SandboxState, **kwargs: Any) -> uvicorn.Config:
    # h11 pinned: connection drops reach into its RequestResponseCycle's transport.
    return uvicorn.Config(
        build_app(state),
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        **kwargs,
    )


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in {"0.0.0.0", ""} else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@contextmanager
def start_sandbox(
    config: SandboxConfig | None = None,
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningSandbox]:
    """Serve a sandbox in a daemon thread; returns once it listens, stops on exit."""
    state = SandboxState(config or SandboxConfig(), Path(data_dir))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says so. Without it every keep-alive reply stalled ~40 ms (Nagle on
    # the reply's second write against the client's delayed ACK), which real TikTok does not do.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here so port 0 resolves before uvicorn starts
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(state))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tiktok-sandbox", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the TikTok sandbox did not start listening")
        time.sleep(0.01)
    running = RunningSandbox(_base_url(host, bound_port), state, server, thread)
    log.info("sandbox_started", base_url=running.base_url)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=SHUTDOWN_TIMEOUT_S)
        sock.close()


def run_sandbox(host: str, port: int, data_dir: Path, config: SandboxConfig | None = None) -> None:
    """Serve a sandbox in the foreground until interrupted (the ``reelflow sandbox`` command)."""
    state = SandboxState(config or SandboxConfig(), Path(data_dir))
    log.info("sandbox_starting", base_url=_base_url(host, port), data_dir=str(data_dir))
    uvicorn.Server(_uvicorn_config(state, host=host, port=port)).run()

"""A request body streamed into a synchronous writer running in a worker thread.

The writer (:mod:`storage.tus_writer`) is synchronous: boto3 and SQLAlchemy calls block. It runs
in a worker thread and pulls the body from a blocking iterator; the event loop reads the body
(``request.stream()``) and hands it over through an anyio memory object stream of
:data:`QUEUE_BLOCKS` blocks. Why anyio's stream and not a ``queue.Queue``: both sides block
the way they should. The loop side *awaits* ``send`` when the writer falls behind (a full
``queue.Queue`` would block the event loop, or need polling), so uvicorn stops reading the
socket and TCP flow control slows the client; the thread side blocks in
``anyio.from_thread.run(receive)`` until a block or the end arrives. Memory per request: at
most ``QUEUE_BLOCKS`` x :data:`BLOCK_BYTES` here, plus the writer's one part buffer.

Small reads are coalesced into blocks of about :data:`BLOCK_BYTES` so that the thread hop
(tens of microseconds) is paid per block, not per 64 KiB socket read.

The body ends (the iterator stops) when the client finished it, disconnected, or sent nothing
for :data:`READ_IDLE_S` (tusd's read timeout, so a dead PATCH does not hold its upload for
ever): whatever arrived counts, as the protocol asks. A checksummed PATCH that was cut short
then fails its checksum and nothing of it is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from starlette.requests import ClientDisconnect, Request

from reelflow.logging import get_logger

T = TypeVar("T")

BLOCK_BYTES = 256 * 1024
QUEUE_BLOCKS = 4
READ_IDLE_S = 60.0


def has_body(request: Request) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked)."""
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def declared_length(request: Request) -> int | None:
    """Content-Length as a number, None when absent or not a number (chunked bodies)."""
    value = request.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def _pump(
    request: Request, send: ObjectSendStream[bytes], idle_s: float, state: dict[str, str]
) -> None:
    """Read the body into ``send`` in blocks; closing ``send`` (always) ends the iterator."""
    async with send:
        block = bytearray()
        chunks = request.stream().__aiter__()
        while True:
            chunk = b""
            with anyio.move_on_after(idle_s) as idle:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except (ClientDisconnect, OSError):
                    state["end"] = "disconnected"
                    break
            if idle.cancelled_caught:
                state["end"] = "idle"
                get_logger("reelflow.gateway").warning("body_read_timed_out", idle_s=idle_s)
                break
            block += chunk
            if len(block) >= BLOCK_BYTES:
                await send.send(bytes(block))
                block.clear()
        if block:
            await send.send(bytes(block))


def _blocking(receive: ObjectReceiveStream[bytes]) -> Iterator[bytes]:
    """The body as a blocking iterator, for the worker thread."""
    while True:
        try:
            yield anyio.from_thread.run(receive.receive)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return


async def with_body(
    request: Request,
    work: Callable[[Iterator[bytes]], T],
    *,
    limiter: anyio.CapacityLimiter,
    idle_s: float = READ_IDLE_S,
) -> tuple[T, str]:
    """Run ``work(body_chunks)`` in a worker thread while the loop streams the body into it.

    Returns what ``work`` returned and how the body ended (``complete``, ``disconnected`` or
    ``idle``). ``work`` may stop reading early (a refusal): the rest of the body is not read.
    """
    send, receive = anyio.create_memory_object_stream[bytes](QUEUE_BLOCKS)
    state = {"end": "complete"}
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_pump, request, send, idle_s, state)
        try:
            # Not cancellable: the thread finishes its durable writes (the tail) even when the
            # server shuts down; the pump's cancellation ends the body for it.
            result = await anyio.to_thread.run_sync(work, _blocking(receive), limiter=limiter)
        # Raised outside the task group: inside, anyio would wrap it in an ExceptionGroup.
        except Exception as exc:
            error = exc
        finally:
            tg.cancel_scope.cancel()
            receive.close()
    if error is not None:
        raise error
    return result, state["end"]

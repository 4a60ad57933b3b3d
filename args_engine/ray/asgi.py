"""Run one HTTP request through an ASGI app in this process, streaming the app's response messages back.

An engine replica serves the same FastAPI app as `args-engine serve`; the ingress hands it the request it
already read (method, path, headers, body) and relays what comes back. httpx's ASGITransport would do the call
but buffers the whole response, which would break streaming.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

# how long an app gets to finish on its own after its client went away, before its task is cancelled
DISCONNECT_GRACE_S = 2.0


async def call_asgi(app, method: str, path: str, query: str, headers: list[tuple[str, str]],
                    body: bytes) -> AsyncIterator[dict]:
    """Yields the app's "http.response.start" message, then its "http.response.body" messages. Closing the
    iterator early (the client left) tells the app through `receive` (http.disconnect), as a server would, and
    cancels its task if it has not ended within DISCONNECT_GRACE_S."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method.upper(), "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "", "client": ("ray-serve-ingress", 0),
             "server": ("args-engine-replica", 0), "state": {},
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
    sent: asyncio.Queue = asyncio.Queue()
    disconnected = asyncio.Event()
    body_left = [body]

    async def receive() -> dict:
        if body_left:
            return {"type": "http.request", "body": body_left.pop(), "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await sent.put(message)

    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: sent.put_nowait(None))  # wakes the reader however the app ends
    try:
        while (message := await sent.get()) is not None:
            yield message
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                break
        await task  # an app that raised before answering raises here
    finally:
        if not task.done():
            disconnected.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_S)
            except BaseException:  # noqa: BLE001 -- the app's own failure after its client left
                task.cancel()

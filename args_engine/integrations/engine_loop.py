"""One background thread drives one LLMEngine for every client of the server.

Handlers never touch the engine: they send commands (add requests, abort them) through a thread-safe queue and
read their requests' TokenEvents from asyncio queues. The thread applies commands between steps, so requests
from all clients join the same continuous batch.
"""
from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from concurrent.futures import Future

from ..decoding.common import Request
from ..engine.llm_engine import LLMEngine


class EngineLoop:
    """Owns `llm` (an LLMEngine) on a daemon thread. Counters feed /metrics."""

    def __init__(self, llm: LLMEngine, rate_window_s: float = 10.0):
        self.llm = llm
        self._cmds: queue.Queue = queue.Queue()
        self._sinks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.requests_total = 0
        self.tokens_total = 0
        self.aborted_total = 0
        self._recent: collections.deque = collections.deque()  # (time, tokens) of recent steps
        self._window = rate_window_s
        self.error: BaseException | None = None

    # --- called from the event loop ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="args-engine-loop", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._cmds.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    async def add(self, reqs: list[Request]) -> tuple[list[int], asyncio.Queue]:
        """Queue `reqs` in the engine -> (their request ids, one queue of all their TokenEvents; an exception
        object in it means the engine failed). Raises ValueError (nothing added) when the engine refuses one."""
        done: Future = Future()
        events: asyncio.Queue = asyncio.Queue()  # made here: it belongs to the caller's event loop
        self._cmds.put(("add", reqs, asyncio.get_running_loop(), events, done))
        return await asyncio.wrap_future(done)

    def abort(self, ids: list[int]) -> None:
        """Drop requests (finished or not); their blocks are freed before the next step."""
        self._cmds.put(("abort", list(ids)))

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= self._window]
        return sum(n for _, n in recent) / self._window if recent else 0.0

    # --- the loop thread --------------------------------------------------------------------------------
    def _apply(self, cmd) -> None:
        if cmd[0] == "add":
            _, reqs, loop, events, done = cmd
            ids = []
            try:
                for r in reqs:
                    ids.append(self.llm.add_request(r))
            except Exception as e:  # noqa: BLE001 -- handed back to the caller
                for rid in ids:
                    self.llm.abort(rid)
                done.set_exception(e)
                return
            for rid in ids:
                self._sinks[rid] = (loop, events)
            self.requests_total += len(ids)
            done.set_result((ids, events))
        elif cmd[0] == "abort":
            for rid in cmd[1]:
                if self._sinks.pop(rid, None) is not None:
                    self.aborted_total += 1
                self.llm.abort(rid)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:  # block while idle; between steps only drain what is there
                cmd = self._cmds.get(timeout=0.1) if not self.llm.has_unfinished() else self._cmds.get_nowait()
                self._apply(cmd)
                while True:
                    self._apply(self._cmds.get_nowait())
            except queue.Empty:
                pass
            if not self.llm.has_unfinished():
                continue
            try:
                events = self.llm.step()
            except Exception as e:  # noqa: BLE001 -- fail the running requests, keep serving
                self.error = e
                for rid, (loop, q) in list(self._sinks.items()):
                    loop.call_soon_threadsafe(q.put_nowait, e)  # once per request: each reader stops at it
                    self.llm.abort(rid)
                self._sinks.clear()
                continue
            now = time.monotonic()
            self.tokens_total += len(events)
            self._recent.append((now, len(events)))
            while self._recent and now - self._recent[0][0] > self._window:
                self._recent.popleft()
            for ev in events:
                sink = self._sinks.get(ev.request_id)
                if sink is None:
                    continue
                if ev.finished:
                    del self._sinks[ev.request_id]
                sink[0].call_soon_threadsafe(sink[1].put_nowait, ev)

"""One background thread drives one LLMEngine for every client of the server.

Handlers never touch the engine: they send commands (add requests, abort them) through a thread-safe queue and
read their requests' TokenEvents from asyncio queues. The thread applies commands between steps, so requests
from all clients join the same continuous batch.

Failures stay contained: a step that raises fails only the requests that were in it (the waiting ones go on),
and after `max_consecutive_failures` failed steps in a row the loop reports itself unhealthy. Should the thread
itself die, every request it holds, and every later one, gets EngineUnavailable instead of hanging.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future

from ..engine.request import Request
from ..engine.llm_engine import LLMEngine
from ..engine.sequence import Status
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """The engine loop is not serving (not started, stopped, or its thread died): HTTP 503."""


class QueueFull(RuntimeError):
    """Too many requests wait for admission: HTTP 429."""


class RequestFailed(RuntimeError):
    """Put in a request's event queue when its step failed: HTTP 500 (or an error chunk when streaming)."""


class EngineLoop:
    """Owns `llm` (an LLMEngine) on a daemon thread. `max_num_waiting`: requests allowed to wait for admission
    (None: no bound); beyond it add() raises QueueFull."""

    def __init__(self, llm: LLMEngine, max_num_waiting: int | None = None, max_consecutive_failures: int = 3,
                 rate_window_s: float = 10.0):
        self.llm = llm
        self.max_num_waiting, self.max_consecutive_failures = max_num_waiting, max_consecutive_failures
        self.rate_window_s = rate_window_s
        self.metrics = ServerMetrics(self)
        self.consecutive_failures = 0
        self.last_failure: str | None = None
        self.dead: BaseException | None = None  # set when the thread died
        self._cmds: queue.Queue = queue.Queue()
        self._sinks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._queued_at: dict[int, float] = {}  # admission time, until the first scheduled step
        self._first_token_due: dict[int, float] = {}  # admission time, until the first token
        self._last_token_at: dict[int, float] = {}
        self._recent: collections.deque = collections.deque()  # (time, tokens) of recent steps
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # orders a command's enqueueing against the thread's end
        self._closed = False  # the thread ended (stopped or died): commands are refused
        self._current_add: Future | None = None

    # --- called from the event loop ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:  # one thread per loop, ever: a stopped loop stays stopped
            self._thread = threading.Thread(target=self._run, name="args-engine-loop", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread; requests still in it, and adds not yet applied, get EngineUnavailable."""
        self._stop.set()
        self._cmds.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def health(self) -> tuple[bool, str]:
        """-> (healthy, reason)."""
        if self.dead is not None:
            return False, f"the engine loop died: {type(self.dead).__name__}: {self.dead}"
        if self._thread is None or not self._thread.is_alive() or self._closed:
            return False, "the engine loop is not running"
        if self.consecutive_failures >= self.max_consecutive_failures:
            return False, f"the last {self.consecutive_failures} engine steps failed: {self.last_failure}"
        return True, "ok"

    async def add(self, reqs: list[Request]) -> tuple[list[int], asyncio.Queue]:
        """Queue `reqs` in the engine -> (their request ids, one queue of all their TokenEvents; a RequestFailed
        or EngineUnavailable object in it ends the stream). Raises ValueError (nothing added) when the engine
        refuses one, QueueFull, or EngineUnavailable. If the caller is cancelled meanwhile, whatever was added is
        aborted."""
        done: Future = Future()
        events: asyncio.Queue = asyncio.Queue()  # made here: it belongs to the caller's event loop
        self._send(("add", reqs, asyncio.get_running_loop(), events, done))
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            done.add_done_callback(self._abort_added)
            raise

    def abort(self, ids: list[int]) -> None:
        """Drop requests (finished or not); their blocks are freed before the next step."""
        self._send(("abort", list(ids)), quiet=True)

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= self.rate_window_s]
        return sum(n for _, n in recent) / self.rate_window_s if recent else 0.0

    def _send(self, cmd, quiet: bool = False) -> None:
        with self._lock:
            if not self._closed and self._thread is not None:
                self._cmds.put(cmd)
                return
        if not quiet:
            raise EngineUnavailable(self.health()[1])

    def _abort_added(self, done: Future) -> None:
        if not done.cancelled() and done.exception() is None:
            self.abort(done.result()[0])

    # --- the loop thread --------------------------------------------------------------------------------
    def _apply(self, cmd) -> None:
        if cmd[0] == "add":
            _, reqs, loop, events, done = cmd
            if not done.set_running_or_notify_cancel():  # the caller went away before this ran
                return
            self._current_add = done  # answered by the death path if this add raises midway
            if self.max_num_waiting is not None and self.llm.num_waiting + len(reqs) > self.max_num_waiting:
                self.metrics.rejected.inc(len(reqs))
                done.set_exception(QueueFull(f"{self.llm.num_waiting} requests are waiting (at most "
                                             f"{self.max_num_waiting}); retry later"))
                self._current_add = None
                return
            try:
                ids = self.llm.add_requests(reqs)
            except Exception as e:  # noqa: BLE001 -- handed back to the caller
                done.set_exception(e)
                self._current_add = None
                return
            now = time.monotonic()
            for rid, r in zip(ids, reqs):
                self._sinks[rid] = (loop, events)
                self._queued_at[rid] = self._first_token_due[rid] = now
            self.metrics.requests.inc(len(ids))
            self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in reqs))
            done.set_result((ids, events))
            self._current_add = None
        elif cmd[0] == "abort":
            for rid in cmd[1]:
                if self._sinks.pop(rid, None) is not None:
                    self.metrics.aborted.inc()
                self._forget(rid)
                self.llm.abort(rid)

    def _forget(self, rid: int) -> None:
        for times in (self._queued_at, self._first_token_due, self._last_token_at):
            times.pop(rid, None)

    def _run(self) -> None:
        died = None
        try:
            while not self._stop.is_set():
                self._drain_commands()
                if self.llm.has_unfinished():
                    self._step()
        except BaseException as e:  # noqa: BLE001 -- the thread must not die silently
            logger.exception("the engine loop died; every request now gets HTTP 503")
            died = e
        error = EngineUnavailable("the server is shutting down" if died is None else
                                  f"the engine loop died: {type(died).__name__}: {died}")
        with self._lock:  # from here on, _send refuses: nothing new can be queued
            self.dead, self._closed = died, True
        # answer everyone first (an abort below may raise again on a broken engine)
        if self._current_add is not None and not self._current_add.done():
            self._current_add.set_exception(error)
        for sink in self._sinks.values():
            _deliver(sink, error)
        while True:  # commands sent before the loop ended
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                break
            if cmd[0] == "add" and cmd[-1].set_running_or_notify_cancel():
                cmd[-1].set_exception(error)
        for rid in list(self._sinks):
            with contextlib.suppress(Exception):
                self.llm.abort(rid)
        self._sinks.clear()

    def _drain_commands(self) -> None:
        try:  # block while idle; between steps only take what is there
            cmd = self._cmds.get(timeout=0.1) if not self.llm.has_unfinished() else self._cmds.get_nowait()
            self._apply(cmd)
            while True:
                self._apply(self._cmds.get_nowait())
        except queue.Empty:
            pass

    def _step(self) -> None:
        try:
            events = self.llm.step()
        except Exception as e:  # noqa: BLE001 -- fail the requests of this step, keep serving the others
            self.consecutive_failures += 1
            self.last_failure = f"{type(e).__name__}: {e}"
            self.metrics.step_failures.inc()
            failed = set(self.llm.failed_request_ids) | self._orphans()
            logger.error("engine step failed (%d in a row), failing its %d requests: %s",
                         self.consecutive_failures, len(failed), self.last_failure)
            if self.consecutive_failures == self.max_consecutive_failures:
                logger.error("unhealthy: the last %d engine steps failed", self.consecutive_failures)
            self._fail(sorted(failed), RequestFailed(f"engine step failed: {self.last_failure}"))
            time.sleep(min(0.01 * self.consecutive_failures, 1.0))  # a failing engine must not spin
            return
        self.consecutive_failures = 0
        now = time.monotonic()
        self.metrics.generated_tokens.inc(len(events))
        self._recent.append((now, len(events)))
        while self._recent and now - self._recent[0][0] > self.rate_window_s:
            self._recent.popleft()
        scheduled = [rid for rid in self._queued_at
                     if rid not in self.llm.seqs or self.llm.seqs[rid].status is not Status.WAITING]
        for rid in scheduled:
            self.metrics.queue_time.observe(now - self._queued_at.pop(rid))
        for ev in events:
            rid = ev.request_id
            if rid in self._first_token_due:
                self.metrics.ttft.observe(now - self._first_token_due.pop(rid))
            elif rid in self._last_token_at:
                self.metrics.itl.observe(now - self._last_token_at[rid])
            self._last_token_at[rid] = now
            sink = self._sinks.get(rid)
            if ev.finished:
                self._sinks.pop(rid, None)
                self._forget(rid)
            if sink is not None and not _deliver(sink, ev):
                self._apply(("abort", [rid]))  # its reader's event loop is gone

    def _orphans(self) -> set[int]:
        """Requests with a reader but no place in the engine any more: finished in a step whose events were lost,
        or dropped from the queues by a scheduler that raised midway."""
        sched = self.llm.scheduler
        queued = {s.seq_id for s in sched.waiting} | {s.seq_id for s in sched.running}
        return {rid for rid in self._sinks if rid not in queued}

    def _fail(self, ids: list[int], error: Exception) -> None:
        for rid in ids:
            sink = self._sinks.pop(rid, None)
            if sink is not None:
                _deliver(sink, error)  # each reader stops at it
            self._forget(rid)
            self.llm.abort(rid)


def _deliver(sink: tuple[asyncio.AbstractEventLoop, asyncio.Queue], item) -> bool:
    """Hand `item` to a reader's queue on its event loop -> False when that loop is closed."""
    try:
        sink[0].call_soon_threadsafe(sink[1].put_nowait, item)
        return True
    except RuntimeError:
        return False

"""A server one can expose: limits, authentication, CORS, OpenAI's status codes, and failures that stay contained
(a failed step, a cancelled handler, a dead engine thread). Raw HTTP, so the checks see what was sent."""
import asyncio
import contextlib
import logging
import threading
import time

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.integrations.engine_loop import EngineLoop, EngineUnavailable
from args_engine.integrations.server import create_app
from args_engine.integrations.server_config import ServerConfig
from server_util import ServerThread, get, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

ARGS = {"args_k": 4, "args_w": 1.0}


def engine(**kw):
    return ARGSEngine(tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), tokenizer=char_tokenizer(),
                      backend="native", block_size=4, batch_size=8, **kw)


@contextlib.contextmanager
def server(**config):
    e = engine()
    app = create_app(e, ServerConfig(served_model_names=["tiny"], **config))
    with ServerThread(app) as url:
        yield e, app, url


@pytest.fixture(scope="module")
def shared():
    with server(max_stop=2, max_stop_chars=8, max_body_bytes=4096, max_k=16) as s:
        yield s


def complete(url, headers=None, **body):
    return post(url, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 4, **ARGS, **body}, headers)


def assert_error(status, body, code, param=None):
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert status == code and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


@pytest.mark.parametrize("field, param", [
    ({"args_k": 17}, "args_k"),                      # over --max-k: refused before any work
    ({"args_k": 49152}, "args_k"),                   # the vocabulary size: once 50 s of work, then a 500
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"n": 2}, "n"),                                  # n identical greedy choices, unless args_mode says so
    ({"stop": ["a", "b", "c"]}, "stop"), ({"stop": "x" * 9}, "stop"),
    ({"stream": True, "stream_options": "yes"}, "stream_options"),
    ({"stream": "yes"}, "stream"),
    ({"max_tokens": 10_000}, "max_tokens"),           # more than the 256-position context leaves
    ({"n": 8, "best_of": 9, "args_mode": "stochastic", "prompt": ["a"] * 8}, "best_of"),
])
def test_bad_fields_get_400(shared, field, param):
    _, _, url = shared
    start = time.monotonic()
    status, body, _ = complete(url, **field)
    assert_error(status, body, 400, param)
    assert time.monotonic() - start < 5


def test_unknown_role_and_template_error_get_400(shared, monkeypatch):
    e, _, url = shared
    status, body, _ = post(url, "/v1/chat/completions", {"model": "tiny", "messages": [
        {"role": "wizard", "content": "hi"}]})
    assert_error(status, body, 400, "messages")
    assert "wizard" in body["error"]["message"]
    monkeypatch.setattr(e.tokenizer, "chat_template", "{{ raise_exception('no system turns here') }}")
    status, body, _ = post(url, "/v1/chat/completions", {"model": "tiny", "messages": [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]})
    assert_error(status, body, 400, "messages")
    assert "no system turns here" in body["error"]["message"]


def test_unknown_model_gets_404(shared):
    _, _, url = shared
    status, body, _ = complete(url, model="gpt-4")
    assert_error(status, body, 404, "model")
    assert body["error"]["code"] == "model_not_found"
    assert get(url, "/v1/models/gpt-4")[0] == 404 and get(url, "/v1/models/tiny")[1]["id"] == "tiny"


def test_content_type_and_body_size(shared):
    _, _, url = shared
    status, body, _ = post(url, "/v1/completions", {"model": "tiny", "prompt": "Hi"}, content_type="text/plain")
    assert_error(status, body, 415)  # a web page's simple POST cannot drive the server
    status, body, _ = post(url, "/v1/completions", None, raw=b'{"prompt": "' + b"x" * 5000 + b'"}')
    assert_error(status, body, 413)


def test_created_is_the_same_in_every_chunk(shared):
    import json
    import urllib.request
    _, _, url = shared
    req = urllib.request.Request(url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 12,
                                                  "stream": True, **ARGS}).encode())
    with urllib.request.urlopen(req) as r:
        lines = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: {")]
    created = {json.loads(line)["created"] for line in lines}
    assert len(lines) >= 2 and len(created) == 1


def test_default_max_tokens_is_capped_by_the_context(shared):
    e, _, url = shared
    prompt = "y" * 250  # the tiny models hold 256 positions; the default asks for 128 new tokens
    status, body, _ = post(url, "/v1/completions", {"model": "tiny", "prompt": prompt, "args_w": 0.0,
                                                    "args_k": 2})
    n_prompt = len(e.tokenizer(prompt)["input_ids"])
    assert status == 200 and body["usage"]["completion_tokens"] <= 256 - n_prompt


def test_api_key_and_cors():
    key = "s3cret-key"
    with server(api_key=key) as (_, _, url):
        assert_error(*complete(url)[:2], 401)
        assert_error(*complete(url, headers={"Authorization": "Bearer wrong"})[:2], 401)
        assert complete(url, headers={"Authorization": f"Bearer {key}"})[0] == 200
        assert get(url, "/health")[0] == 200 and get(url, "/v1/models")[0] == 401
        _, _, headers = complete(url, headers={"Authorization": f"Bearer {key}", "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in headers  # CORS off by default
    with server(api_key=key, auth_health_metrics=True, allowed_origins=["http://app.test"]) as (_, _, url):
        assert get(url, "/health")[0] == 401 and get(url, "/metrics")[0] == 401
        _, _, headers = complete(url, headers={"Authorization": f"Bearer {key}", "Origin": "http://app.test"})
        assert headers["access-control-allow-origin"] == "http://app.test"


def test_full_queue_gets_429_with_retry_after():
    with server(max_num_waiting=2, max_choices=2) as (e, _, url):
        llm = e.decoder
        llm.scheduler.max_num_seqs = 1  # one runs, the rest wait
        slow_steps(llm, 0.05)
        first = threading.Thread(target=complete, args=(url,), kwargs={"prompt": ["a", "b"], "max_tokens": 6})
        first.start()
        while llm.num_waiting < 1:
            time.sleep(0.005)
        status, body, headers = complete(url, prompt=["c", "d"])  # 1 waiting + 2 > 2
        assert_error(status, body, 429)
        assert headers["retry-after"] == "1"
        first.join(30)
        assert complete(url, prompt=["c", "d"])[0] == 200  # once the queue drains


def slow_steps(llm, seconds=0.02):
    step = llm.step
    llm.step = lambda: (time.sleep(seconds), step())[1]


def test_failed_step_fails_only_its_requests_and_health_tracks_failures(caplog):
    with server(max_consecutive_failures=2) as (e, app, url):
        llm = e.decoder
        run, fails = llm._run, {"left": 0}

        def flaky(prefill, decode):  # the step's forward fails: LLMEngine.step's own recovery runs
            if fails["left"] > 0:
                fails["left"] -= 1
                raise RuntimeError("device lost")
            return run(prefill, decode)

        llm._run = flaky
        fails["left"] = 1
        with caplog.at_level(logging.ERROR, logger="args_engine"):
            status, body, _ = complete(url)
        assert_error(status, body, 500)
        assert "device lost" in body["error"]["message"]
        assert get(url, "/health")[0] == 200  # one failure: still healthy
        assert complete(url)[0] == 200       # and serving
        fails["left"] = 2
        complete(url), complete(url)
        status, health, _ = get(url, "/health")
        assert status == 503 and "device lost" in health["reason"]
        assert any("unhealthy" in r.getMessage() for r in caplog.records)
        assert complete(url)[0] == 200 and get(url, "/health")[0] == 200  # a good step makes it healthy again
        assert llm.num_used_blocks == 0 and llm.num_running == 0


def test_a_failed_step_spares_the_waiting_requests():
    """Only the sequences in the failed step fail: one waiting for a batch slot is served afterwards."""
    e = engine()
    loop = EngineLoop(e.decoder)
    llm = e.decoder
    llm.scheduler.max_num_seqs = 1  # the second request waits while the first runs
    run, calls = llm._run, {"n": 0}

    def fail_first(prefill, decode):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return run(prefill, decode)

    llm._run = fail_first

    async def main():
        ids, events = await loop.add([e.make_request("Hi", e_params()), e.make_request("Yo", e_params())])
        got = {}
        while len(got) < 2:
            ev = await asyncio.wait_for(events.get(), 30)
            if isinstance(ev, Exception):
                got[ids[0]] = ev  # the first (running) request's failure
            elif ev.finished:
                got[ev.request_id] = ev
        return ids, got

    loop.start()
    try:
        ids, got = asyncio.run(main())
    finally:
        loop.shutdown()
    assert isinstance(got[ids[0]], RuntimeError) and got[ids[1]].output.finish_reason == "length"


def e_params():
    return ARGSParams(k=3, max_new_tokens=3)


def test_cancelled_add_does_not_kill_the_engine_thread():
    """A handler cancelled while its add waits for the engine thread: the thread lives on, and requests the add
    did queue are aborted."""
    e = engine()
    llm = e.decoder
    loop = EngineLoop(llm)
    gate = threading.Event()
    apply = loop._apply
    loop._apply = lambda cmd: (gate.wait(10), apply(cmd))[1]

    async def main():
        task = asyncio.ensure_future(loop.add([e.make_request("Hi", e_params())]))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()
        ids, events = await loop.add([e.make_request("Yo", e_params())])
        while not (await asyncio.wait_for(events.get(), 30)).finished:
            pass

    run_until_idle(loop, llm, main)
    assert loop._thread.is_alive() and loop.dead is None
    assert not llm.has_unfinished() and llm.num_used_blocks == 0
    loop.shutdown()


def test_cancel_after_the_add_ran_aborts_its_requests():
    """The add ran in the engine thread, but its caller is cancelled before it sees the ids: they are aborted."""
    e = engine()
    llm = e.decoder
    loop = EngineLoop(llm)
    box, apply = {}, loop._apply

    def apply_then_cancel(cmd):
        apply(cmd)
        if cmd[0] == "add":
            box["loop"].call_soon_threadsafe(box["task"].cancel)

    loop._apply = apply_then_cancel

    async def main():
        box["loop"] = asyncio.get_running_loop()
        box["task"] = asyncio.ensure_future(loop.add([e.make_request("Hi", e_params())]))
        with pytest.raises(asyncio.CancelledError):
            await box["task"]

    run_until_idle(loop, llm, main)
    loop.shutdown()
    assert not llm.has_unfinished() and llm.num_used_blocks == 0
    assert loop.metrics.registry.get_sample_value("args_engine_requests_aborted_total") == 1


def test_dead_engine_thread_gives_503_not_hangs():
    with server() as (e, app, url):
        llm = e.decoder
        slow_steps(llm, 0.05)
        results = {}
        t = threading.Thread(target=lambda: results.update(first=complete(url, max_tokens=50)))
        t.start()
        while not llm.has_unfinished():
            time.sleep(0.005)

        def die():
            raise SystemExit("killed by the test")  # not an Exception: nothing inside the loop catches it

        llm.step = die
        t.join(30)
        assert not t.is_alive()
        assert_error(*results["first"][:2], 503)
        status, body, _ = complete(url)
        assert_error(status, body, 503)
        assert "killed by the test" in body["error"]["message"]
        status, health, _ = get(url, "/health")
        assert status == 503 and "died" in health["reason"]
        with pytest.raises(EngineUnavailable):
            asyncio.run(app.state.loop.add([e.make_request("Hi", e_params())]))


def run_until_idle(loop, llm, main, timeout=10.0):
    """Start the loop, run main(), then wait (up to timeout) until the engine holds no request and no block.
    On an error the loop is shut down; otherwise the caller checks it, then shuts it down."""
    loop.start()
    try:
        asyncio.run(main())
        deadline = time.monotonic() + timeout
        while (llm.has_unfinished() or llm.num_used_blocks) and time.monotonic() < deadline:
            time.sleep(0.02)
    except BaseException:
        loop.shutdown()
        raise


def run_loop(loop, coro_fn, timeout=30):
    loop.start()
    try:
        return asyncio.run(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.shutdown()


def test_requests_that_finish_in_a_failed_step_are_answered():
    """The step raises after one row already finished (its event is lost): both readers get an answer."""
    e = engine()
    llm = e.decoder
    loop = EngineLoop(llm)
    event, calls = llm.outputs._event, {"n": 0}

    def second_event_fails(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("lost in the middle")
        return event(*args)

    llm.outputs._event = second_event_fails

    async def main():
        ids, events = await loop.add([e.make_request(p, ARGSParams(k=3, max_new_tokens=1)) for p in ("Hi", "Yo")])
        got = [await events.get(), await events.get()]
        return ids, got

    ids, got = run_loop(loop, main)
    assert all(isinstance(g, RuntimeError) for g in got)
    assert llm.num_used_blocks == 0 and not llm.has_unfinished()


def test_shutdown_answers_requests_in_flight():
    e = engine()
    llm = e.decoder
    slow_steps(llm, 0.05)
    loop = EngineLoop(llm)

    async def main():
        ids, events = await loop.add([e.make_request("Hi", e_params_long())])
        await asyncio.sleep(0.1)
        await asyncio.get_running_loop().run_in_executor(None, loop.shutdown)
        while not isinstance(ev := await events.get(), Exception):
            pass
        return ev

    loop.start()
    ev = asyncio.run(asyncio.wait_for(main(), 30))
    assert isinstance(ev, EngineUnavailable) and "shutting down" in str(ev)
    assert not loop.health()[0]
    with pytest.raises(EngineUnavailable):
        asyncio.run(loop.add([e.make_request("Hi", e_params())]))


def e_params_long():
    return ARGSParams(k=3, max_new_tokens=200)


def test_config_keeps_a_large_request_admissible():
    with pytest.raises(ValueError, match="max_num_waiting"):
        ServerConfig(max_choices=100, max_num_waiting=50)

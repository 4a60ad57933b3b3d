"""The OpenAI-compatible server, driven by the official `openai` client on loopback with tiny random models."""
import json
import time
import urllib.request

import openai
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.integrations.server import create_app
from args_engine.integrations.server_config import ServerConfig
from server_util import ServerThread, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

ARGS = {"args_k": 5, "args_w": 1.5}


@pytest.fixture(scope="module")
def server():
    tok = char_tokenizer()
    engine = ARGSEngine(tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), tokenizer=tok,
                        backend="native", block_size=4, batch_size=8)
    app = create_app(engine, ServerConfig(served_model_names=["tiny"]))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        yield engine, app, url, client


def oracle(engine):
    """A second engine on the same models: the server's loop thread steps the first one."""
    return ARGSEngine(engine.lm, engine.rm, tokenizer=engine.tokenizer, backend="native", block_size=4)


def wait_free(engine, timeout=20.0):
    deadline = time.monotonic() + timeout
    while engine.decoder.num_used_blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    return engine.decoder.num_used_blocks


def test_completion_equals_engine(server):
    engine, _, _, client = server
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, extra_body=ARGS)
    ids = engine.tokenizer("Hello there")["input_ids"]
    expected = oracle(engine).generate([ids], ARGSParams(k=5, w=1.5, max_new_tokens=12), progress=False)[0]
    c = r.choices[0]
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    assert c.text == expected.text and c.finish_reason == expected.finish_reason
    assert r.usage.completion_tokens == len(expected.token_ids) and r.usage.prompt_tokens == len(ids)
    assert c.model_extra["rewards"] == pytest.approx(expected.rewards, rel=1e-5, abs=1e-5)


def test_chat_completion_and_streaming_agree(server):
    _, _, _, client = server
    msgs = [{"role": "user", "content": "What is the best way to cook rice?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, extra_body=ARGS)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    assert len(r.choices[0].model_extra["rewards"]) == r.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=ARGS))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # completions stream too
    full = client.completions.create(model="tiny", prompt="Hi", max_tokens=10, extra_body=ARGS).choices[0].text
    parts = client.completions.create(model="tiny", prompt="Hi", max_tokens=10, stream=True, extra_body=ARGS)
    assert "".join(c.choices[0].text for c in parts) == full


def test_n_stop_and_stochastic_seed(server):
    _, _, _, client = server
    body = dict(model="tiny", prompt=["Hi", "Tell me a joke."], max_tokens=8, n=3, temperature=0.9, seed=5,
                extra_body={**ARGS, "args_mode": "stochastic"})
    a, b = client.completions.create(**body), client.completions.create(**body)
    assert [c.index for c in a.choices] == list(range(6))
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # same seed, same text
    greedy = client.completions.create(model="tiny", prompt="Hi", max_tokens=8, n=2,
                                       extra_body={**ARGS, "args_mode": "greedy"})
    assert greedy.choices[0].text == greedy.choices[1].text
    text = greedy.choices[0].text
    assert len(text) >= 4 and greedy.choices[0].finish_reason == "length"  # the stop check below always runs
    stop = text[2:4]
    r = client.completions.create(model="tiny", prompt="Hi", max_tokens=8, stop=[stop], extra_body=ARGS)
    assert r.choices[0].text == text[:text.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_best_of_returns_the_highest_reward_samples(server):
    engine, _, _, client = server
    extra = {**ARGS, "args_mode": "stochastic"}
    hits = engine.decoder.bm.num_hit_tokens
    r = client.completions.create(model="tiny", prompt=["Hi", "Tell me a joke."], max_tokens=8, n=2, best_of=5,
                                  temperature=0.9, seed=11, extra_body=extra)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    ref = oracle(engine)
    for p, prompt in enumerate(["Hi", "Tell me a joke."]):
        ids = engine.tokenizer(prompt)["input_ids"]
        samples = [ref.generate([ids], ARGSParams(k=5, w=1.5, mode="stochastic", temperature=0.9, seed=11 + j,
                                                     max_new_tokens=8), progress=False)[0] for j in range(5)]
        best = sorted(samples, key=lambda o: -o.reward)[:2]
        got = r.choices[2 * p:2 * p + 2]
        assert [c.text for c in got] == [o.text for o in best]
        assert [c.model_extra["reward"] for c in got] == pytest.approx([o.reward for o in best], rel=1e-5, abs=1e-5)
    assert r.usage.completion_tokens >= 4  # counts every sample drawn, as OpenAI does
    assert r.usage.prompt_tokens == sum(len(engine.tokenizer(p)["input_ids"]) for p in ["Hi", "Tell me a joke."])
    # the 5 samples of a prompt are admitted together and share its full blocks
    prompt_blocks = sum((len(engine.tokenizer(p)["input_ids"]) - 1) // 4 * 4 for p in ["Hi", "Tell me a joke."])
    assert engine.decoder.bm.num_hit_tokens - hits >= 4 * prompt_blocks > 0
    assert wait_free(engine) == 0


@pytest.mark.parametrize("extra, param", [({"args_k": 0}, "args_k"), ({"args_mode": "beam"}, "args_mode"),
                                          ({"args_w": "x"}, "args_w"), ({"max_tokens": -1}, "max_tokens"),
                                          ({"args_mode": "stochastic", "temperature": 0}, "temperature"),
                                          ({"best_of": 3}, "best_of"), ({"n": 2, "best_of": 1}, "best_of"),
                                          ({"args_mode": "stochastic", "best_of": 2, "stream": True}, "best_of")])
def test_bad_parameters_get_openai_400(server, extra, param):
    _, _, url, client = server
    status, body, _ = post(url, "/v1/completions", {"model": "tiny", "prompt": "Hi", **extra})
    assert status == 400 and set(body) == {"error"}  # the raw JSON: the envelope itself, not the client's view
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    with pytest.raises(openai.BadRequestError):  # and the official client raises on it
        client.completions.create(model="tiny", prompt="Hi", extra_body=extra)


def test_models_health_metrics(server):
    engine, _, url, client = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert json.load(urllib.request.urlopen(url + "/health"))["status"] == "ok"
    client.completions.create(model="tiny", prompt="Hi", max_tokens=4, extra_body=ARGS)
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert "# TYPE args_engine_requests_total counter" in text
    assert float(values["args_engine_requests_total"]) >= 1
    assert float(values["args_engine_generated_tokens_total"]) >= 1
    assert float(values["args_engine_prompt_tokens_total"]) >= 1
    assert float(values["args_engine_cache_blocks_total"]) == engine.decoder.num_blocks
    assert float(values["args_engine_time_to_first_token_seconds_count"]) >= 1
    assert float(values["args_engine_inter_token_latency_seconds_count"]) >= 1
    assert float(values["args_engine_queue_time_seconds_count"]) >= 1
    for name in ("tokens_per_second", "requests_running", "requests_waiting", "cache_blocks_used",
                 "preemptions_total", "step_failures_total", "prefix_cache_hit_tokens_total",
                 "prefix_cache_miss_tokens_total", "healthy"):
        assert f"args_engine_{name}" in values


def test_concurrent_requests_share_the_batch(server):
    import concurrent.futures as cf
    engine, _, _, client = server
    llm = engine.decoder
    prompts = ["Hi", "Hello there", "x", "Tell me a joke.", "abc"]
    step, batch_sizes = llm.step, []
    llm.step = lambda: (batch_sizes.append(llm.num_running), time.sleep(0.01), step())[2]
    try:
        with cf.ThreadPoolExecutor(5) as pool:
            got = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=10,
                                                                    extra_body=ARGS).choices[0].text, prompts))
    finally:
        llm.step = step
    assert max(batch_sizes) >= 3  # they ran in one batch, not one after another
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=10, extra_body=ARGS).choices[0].text
             for p in prompts]
    assert got == alone  # greedy output does not depend on the batch
    assert wait_free(engine) == 0


def test_disconnect_mid_stream_frees_blocks(server):
    engine, app, _, client = server
    llm, loop = engine.decoder, app.state.loop
    step = llm.step
    llm.step = lambda: (time.sleep(0.03), step())[1]  # slow steps so the client leaves mid-decode
    try:
        aborted = loop.metrics.registry.get_sample_value("args_engine_requests_aborted_total")
        stream = client.completions.create(model="tiny", prompt="Hi", max_tokens=200, stream=True,
                                           extra_body={**ARGS, "args_w": 0.0})
        for i, _ in enumerate(stream):
            if i == 2:
                break
        assert llm.num_used_blocks > 0
        stream.close()
        assert wait_free(engine) == 0
        assert loop.metrics.registry.get_sample_value("args_engine_requests_aborted_total") == aborted + 1
    finally:
        llm.step = step


def test_cli_serve(tmp_path):
    import subprocess
    import sys
    from server_util import free_port
    lm_dir, rm_dir = tmp_path / "lm", tmp_path / "rm"
    tiny_lm(dtype=torch.float32).save_pretrained(lm_dir)
    char_tokenizer().save_pretrained(lm_dir)
    tiny_rm(dtype=torch.float32).save_pretrained(rm_dir)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "args_engine.cli", "serve", "--lm", str(lm_dir), "--rm",
                             str(rm_dir), "--port", str(port), "--batch-size", "4", "--log-level", "warning"],
                            cwd=tmp_path)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        assert [m.id for m in models.data] == ["lm", "args-engine"]  # the LM directory's name, then the alias
        r = client.chat.completions.create(model="args-engine", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=5)
        assert r.usage.completion_tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_load_script_against_running_server(server, tmp_path):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"
    spec = importlib.util.spec_from_file_location("load_test", path)
    load_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_test)
    _, _, url, _ = server
    out = tmp_path / "load.json"
    result = load_test.main(["--url", url, "--clients", "3", "--duration", "1", "--max-tokens", "6", "--k", "4",
                             "--out", str(out)])
    assert result["requests"] >= 3 and result["tokens"] >= 3 and result["ttft_ms"]["p50"] is not None
    assert json.loads(out.read_text())["clients"] == 3


def test_serves_an_rm_on_another_tokenizer_with_its_own_template():
    """A bridged RM (another tokenizer) on the native engine behind the server: the RM reads each prompt in its
    own chat template, as ARGSEngine.generate gives it the messages (not the LM's rendering of them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tiny_models import VOCAB
    rm_raw = Tokenizer(models.WordLevel({t: i for i, t in enumerate(reversed(VOCAB))}, unk_token="<unk>"))
    rm_raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    rm_raw.decoder = decoders.Fuse()
    rm_tok = PreTrainedTokenizerFast(tokenizer_object=rm_raw, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    rm_tok.chat_template = ("{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
                            "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    engine = ARGSEngine(lm, rm, tokenizer=tok, rm_tokenizer=rm_tok, backend="native", block_size=4)
    reference = ARGSEngine(lm, rm, tokenizer=tok, rm_tokenizer=rm_tok, backend="reference")
    messages = [{"role": "user", "content": "Where is the station?"}]
    want = reference.generate([messages], ARGSParams(k=5, w=1.5, max_new_tokens=6), progress=False)[0]
    with ServerThread(create_app(engine)) as url:
        status, body, _ = post(url, "/v1/chat/completions", {"messages": messages, "max_tokens": 6, **ARGS})
    assert status == 200, body
    got = body["choices"][0]
    assert got["message"]["content"] == want.text
    torch.testing.assert_close(torch.tensor(got["rewards"], dtype=torch.float64),
                               torch.tensor(want.rewards, dtype=torch.float64))

"""Soak test of the OpenAI-compatible server: for a bounded time, C loopback clients mix streaming and
non-streaming requests, n > 1 and best_of, every bad field the server must refuse, and disconnects at random
points. It passes when every valid response equals an offline engine's output for the same request, every bad
one is a 4xx with OpenAI's error envelope, and at the end no request runs, no cache block is in use and
/health is ok.

    python benchmarks/soak.py --clients 16 --duration 600      # default models, in-process server
    python benchmarks/soak.py --lm DIR --rm DIR --clients 4 --duration 10 --max-tokens 6   # a short run

The server runs in float64 by default: there greedy and seeded sampling give the same tokens whatever else is
in the batch and whatever the prefix cache served, so "equals the offline engine" is exact (in float32 a
batch changes the last bits, and an exact near-tie may flip, as in any batched engine). Prints requests served,
faults injected, bad inputs tried, p50/p99 time to first token and inter-token latency (streamed requests,
client side) and peak RSS (this process: server, clients and oracle), and writes JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/bench_common.py, load_test.py
from load_test import PROMPTS, percentile  # noqa: E402

MODEL = "soak"


@dataclass
class Case:
    """One valid request: what was sent and what came back (texts and finish reasons by choice index)."""
    path: str
    body: dict
    texts: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


def valid_case(rng: random.Random, max_tokens: int) -> Case:
    """A request from a small space (8 prompts x 2 endpoints x a few settings), so the offline check of every
    response stays affordable: distinct requests are decoded once."""
    i = rng.randrange(len(PROMPTS))
    body = {"model": MODEL, "max_tokens": max_tokens, "args_k": 10, "args_w": (0.5, 1.0, 1.5)[i % 3],
            "stream": rng.random() < 0.5}
    kind = rng.choice(["greedy", "greedy", "stop", "n", "best_of"])
    if kind == "stop":
        body["stop"] = [rng.choice([".", ",", " the"])]
    elif kind == "n":
        body.update(n=2, args_mode="stochastic", temperature=0.8, seed=rng.randrange(2))
    elif kind == "best_of":
        body.update(n=1, best_of=3, args_mode="stochastic", temperature=0.8, seed=rng.randrange(2), stream=False)
    if rng.random() < 0.5:
        return Case("/v1/completions", {**body, "prompt": PROMPTS[i]})
    return Case("/v1/chat/completions", {**body, "messages": [{"role": "user", "content": PROMPTS[i]}]})


def bad_cases(context: int, vocab: int, max_body: int) -> list[tuple[str, str, bytes, str, int]]:
    """(name, path, raw body, content type, expected status): every field the server must refuse."""
    ok = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
    fields = {"args_k=0": {"args_k": 0}, "args_k=vocab": {"args_k": vocab}, "args_w=NaN": {"args_w": float("nan")},
              "args_w=big": {"args_w": "big"}, "n=1000": {"n": 1000}, "temperature=-1": {"temperature": -1},
              "top_p=0": {"top_p": 0}, "stream_options=yes": {"stream": True, "stream_options": "yes"},
              "5 stop strings": {"stop": ["a", "b", "c", "d", "e"]}, "n=2 greedy": {"n": 2},
              "max_tokens>context": {"max_tokens": context + 1}, "args_mode=beam": {"args_mode": "beam"},
              "best_of streamed": {"best_of": 2, "args_mode": "stochastic", "stream": True},
              "over-long prompt": {"prompt": "hello " * (context + 16)}}
    cases = [(name, "/v1/completions", json.dumps({**ok, **f}).encode(), "application/json",
              400) for name, f in fields.items()]
    cases += [("unknown model", "/v1/completions", json.dumps({**ok, "model": "gpt-4"}).encode(), "application/json",
               404),
              ("unknown role", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [
                  {"role": "wizard", "content": "hi"}]}).encode(), "application/json", 400),
              ("invalid JSON", "/v1/completions", b'{"prompt": "Hi"', "application/json", 400),
              ("array body", "/v1/completions", b'[{"prompt": "Hi"}]', "application/json", 400),
              ("text/plain body", "/v1/completions", json.dumps(ok).encode(), "text/plain", 415),
              ("body too big", "/v1/completions", b'{"prompt": "' + b"x" * max_body + b'"}', "application/json",
               413)]
    return cases


class Soak:
    def __init__(self, url: str, args, bad: list):
        self.url, self.args, self.bad = url, args, bad
        self.lock = threading.Lock()
        self.cases: list[Case] = []
        self.bad_results: list[tuple[str, int, int, bool]] = []  # name, expected, got, envelope ok
        self.faults = Counter()
        self.bad_sent = 0
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.errors: list[str] = []

    def client(self, cid: int, deadline: float) -> None:
        rng = random.Random(self.args.seed * 1000 + cid)
        with httpx.Client(base_url=self.url, timeout=600) as http:
            while time.monotonic() < deadline:
                try:
                    roll = rng.random()
                    if roll < self.args.bad_rate:
                        self.send_bad(http, self.next_bad())
                    elif roll < self.args.bad_rate + self.args.disconnect_rate:
                        self.disconnect(http, rng)
                    else:
                        self.send_valid(http, valid_case(rng, self.args.max_tokens))
                except Exception as e:  # noqa: BLE001 -- a client error is a finding, not a crash
                    with self.lock:
                        self.errors.append(f"client {cid}: {type(e).__name__}: {e}")

    def next_bad(self):
        """The bad inputs in turn, across all clients: every kind is tried once before any is tried twice."""
        with self.lock:
            self.bad_sent += 1
            return self.bad[(self.bad_sent - 1) % len(self.bad)]

    def send_bad(self, http: httpx.Client, case) -> None:
        name, path, raw, ctype, expected = case
        r = http.post(path, content=raw, headers={"Content-Type": ctype})
        body = r.json()
        envelope = (set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
                    and bool(body["error"]["message"]))
        with self.lock:
            self.bad_results.append((name, expected, r.status_code, envelope))

    def send_valid(self, http: httpx.Client, case: Case) -> None:
        start = time.perf_counter()
        if not case.body["stream"]:
            r = http.post(case.path, json=case.body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code} for a valid request: {r.text[:300]}")
            for c in r.json()["choices"]:
                case.texts[c["index"]] = c["text"] if "text" in c else c["message"]["content"]
                case.reasons[c["index"]] = c["finish_reason"]
        else:
            first, last, gaps = None, None, []
            with http.stream("POST", case.path, json=case.body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code} for a valid stream: {r.read()[:300]!r}")
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(f"error chunk in a valid stream: {chunk}")
                    now = time.perf_counter()
                    for c in chunk["choices"]:
                        text = c["text"] if "text" in c else c["delta"].get("content", "")
                        case.texts[c["index"]] = case.texts.get(c["index"], "") + text
                        if c["finish_reason"]:
                            case.reasons[c["index"]] = c["finish_reason"]
                        if text or c["finish_reason"]:
                            if first is None:
                                first = now - start
                            else:
                                gaps.append(now - last)
                            last = now
            with self.lock:
                if first is not None:
                    self.ttft.append(first)
                self.itl.extend(gaps)
        with self.lock:
            self.cases.append(case)

    def disconnect(self, http: httpx.Client, rng: random.Random) -> None:
        """Leave mid-request: a stream closed after a few chunks, or a plain request given up before its answer."""
        case = valid_case(rng, max(self.args.max_tokens, 16))
        case.body["stream"] = rng.random() < 0.7
        if case.body["stream"]:
            case.body.pop("best_of", None)
        if case.body["stream"]:
            with http.stream("POST", case.path, json=case.body) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n >= rng.randrange(1, 6):
                        break  # leaving the block closes the connection mid-stream
            kind = "stream closed mid-way"
        else:
            try:
                http.post(case.path, json=case.body, timeout=rng.uniform(0.02, 0.3))
                kind = "plain request (answered before the client left)"
            except httpx.TimeoutException:
                kind = "plain request abandoned"
        with self.lock:
            self.faults[kind] += 1


def request_key(case: Case) -> str:
    return case.path + json.dumps({k: v for k, v in case.body.items() if k != "stream"}, sort_keys=True)


def expected_outputs(oracle, cases: list[Case]) -> dict[str, tuple[list[str], list[str]]]:
    """The offline engine's choices for each distinct request, decoded in one continuous batch: best_of samples
    with seeds seed, seed + 1, ..., the n of highest final reward first (all, in order, when best_of == n).
    -> {request key: (texts, finish reasons)}"""
    from args_engine import ARGSParams
    from args_engine.chat import render_prompt

    distinct = {request_key(c): c for c in cases}
    prompts, params, spans = [], [], {}
    for key, case in distinct.items():
        b = case.body
        if case.path == "/v1/completions":
            ids = render_prompt(oracle.tokenizer, b["prompt"], raw=True)
        else:
            ids = render_prompt(oracle.tokenizer, b["messages"])
        best_of, seed = b.get("best_of", b.get("n", 1)), b.get("seed")
        spans[key] = (len(prompts), best_of, b.get("n", 1))
        for i in range(best_of):
            prompts.append(ids)
            params.append(ARGSParams(k=b["args_k"], w=b["args_w"], mode=b.get("args_mode", "greedy"),
                                     temperature=b.get("temperature", 1.0), max_new_tokens=b["max_tokens"],
                                     seed=None if seed is None else seed + i, stop=b.get("stop")))
    outs = oracle.generate(prompts, params, progress=False) if prompts else []
    expected = {}
    for key, (start, best_of, n) in spans.items():
        samples = outs[start:start + best_of]
        if best_of > n:
            samples = sorted(samples, key=lambda o: -o.reward)[:n]
        expected[key] = ([o.text for o in samples], [o.finish_reason for o in samples])
    return expected


def wait_idle(http: httpx.Client, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        text = http.get("/metrics").text
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line and not line.startswith("#")}
        idle = values["args_engine_requests_running"] == 0 and values["args_engine_requests_waiting"] == 0 \
            and values["args_engine_cache_blocks_used"] == 0
        if idle or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", help="LM directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--rm", help="RM directory (default: the project's RM)")
    p.add_argument("--dtype", default="float64", help="float64 makes the offline comparison exact (see above)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=600.0, help="seconds to keep sending new requests")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--bad-rate", type=float, default=0.2, help="share of requests that are bad inputs")
    p.add_argument("--disconnect-rate", type=float, default=0.1, help="share of requests the client abandons")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON path (default: benchmarks/results/soak_<machine>.json)")
    args = p.parse_args(argv)

    from args_engine import ARGSEngine
    from args_engine.integrations.server import create_app
    from args_engine.integrations.server_config import ServerConfig
    from args_engine.integrations.server_thread import ServerThread

    engine = ARGSEngine.from_pretrained(lm=args.lm, rm=args.rm, dtype=args.dtype, backend="native",
                                        batch_size=args.batch_size)
    config = ServerConfig(served_model_names=[MODEL])
    bad = bad_cases(engine.context_length, engine.vocab_size, config.max_body_bytes)
    start = time.monotonic()
    with ServerThread(create_app(engine, config)) as url:
        soak = Soak(url, args, bad)
        threads = [threading.Thread(target=soak.client, args=(c, start + args.duration)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        with httpx.Client(base_url=url, timeout=60) as http:
            final = wait_idle(http)
            health = http.get("/health")
    # the offline engine: the same model objects, its own cache, no prefix cache
    oracle = ARGSEngine(engine.lm, engine.rm, tokenizer=engine.tokenizer, backend="native",
                        batch_size=args.batch_size, enable_prefix_caching=False)
    expected, wrong = expected_outputs(oracle, soak.cases), []
    for case in soak.cases:
        texts, reasons = expected[request_key(case)]
        got = [case.texts.get(i) for i in range(len(texts))], [case.reasons.get(i) for i in range(len(texts))]
        if got != (texts, reasons):
            wrong.append({"request": case.body, "path": case.path, "got": got, "expected": (texts, reasons)})
    bad_wrong = [r for r in soak.bad_results if r[2] != r[1] or not r[3]]
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    from bench_common import machine_name, write_result
    result = {
        "machine": machine_name(), "clients": args.clients, "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1), "dtype": args.dtype, "max_tokens": args.max_tokens,
        "lm": args.lm or "default", "rm": args.rm or "default", "batch_size": args.batch_size,
        "valid_requests_served": len(soak.cases), "distinct_valid_requests": len(expected),
        "wrong_outputs": len(wrong), "wrong_examples": wrong[:5],
        "faults_injected": sum(soak.faults.values()), "faults": dict(soak.faults),
        "bad_inputs_tried": len(soak.bad_results), "bad_input_kinds": len({r[0] for r in soak.bad_results}),
        "bad_inputs_mishandled": len(bad_wrong), "bad_examples": bad_wrong[:5],
        "client_errors": len(soak.errors), "client_error_examples": soak.errors[:5],
        "ttft_ms": {"p50": ms(percentile(soak.ttft, 50)), "p99": ms(percentile(soak.ttft, 99))},
        "itl_ms": {"p50": ms(percentile(soak.itl, 50)), "p99": ms(percentile(soak.itl, 99))},
        "end": {"running": final["args_engine_requests_running"], "waiting": final["args_engine_requests_waiting"],
                "blocks_in_use": final["args_engine_cache_blocks_used"], "health": health.status_code,
                "step_failures": final["args_engine_step_failures_total"],
                "preemptions": final["args_engine_preemptions_total"]},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    end = result["end"]
    clean_end = end["running"] == end["waiting"] == end["blocks_in_use"] == 0 and end["health"] == 200
    result["passed"] = not wrong and not bad_wrong and not soak.errors and len(soak.cases) > 0 and clean_end
    print(f"{'PASSED' if result['passed'] else 'FAILED'}: {len(soak.cases)} valid requests served "
          f"({len(expected)} distinct, {len(wrong)} wrong), {result['faults_injected']} faults injected, "
          f"{len(soak.bad_results)} bad inputs tried ({result['bad_input_kinds']} kinds, {len(bad_wrong)} "
          f"mishandled), {len(soak.errors)} client errors, in {result['elapsed_s']} s with {args.clients} clients")
    print(f"TTFT ms p50 {result['ttft_ms']['p50']} p99 {result['ttft_ms']['p99']}; ITL ms p50 "
          f"{result['itl_ms']['p50']} p99 {result['itl_ms']['p99']}; peak RSS {result['peak_rss_mb']} MB; end: "
          f"{result['end']}")
    write_result(result, "soak", args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)

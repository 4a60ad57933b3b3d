"""Load test of the OpenAI-compatible server: N concurrent streaming clients on loopback for a bounded time.

    python benchmarks/load_test.py --clients 8 --duration 60                  # starts a server (default models)
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 8    # against a running server

Each client sends streaming chat completions back to back until the time is up (requests in flight then finish).
Prints requests/s, tokens/s, p50/p99 time to first token (TTFT) and inter-token latency (ITL, the gap between
streamed chunks; a chunk is one token unless text was held back) and writes JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import openai

PROMPTS = [
    "How can I get my neighbor's dog to stop barking at night?",
    "What should I do if I find a wallet on the street?",
    "Can you give me some tips for staying focused while studying?",
    "How do I apologise to a friend I hurt?",
    "What is a good way to start learning to cook?",
    "How can I save money on groceries?",
    "What should I pack for a weekend hike?",
    "How do I deal with a rude coworker?",
]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def client_loop(url: str, model: str, cid: int, deadline: float, args, out: dict, lock: threading.Lock) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    i = cid
    while time.monotonic() < deadline:
        start = time.perf_counter()
        first, last, gaps, tokens = None, None, [], 0
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=args.max_tokens, stream=True, stream_options={"include_usage": True},
            extra_body={"args_k": args.k, "args_w": args.w})
        for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if not chunk.choices or not (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
                continue  # the role chunk and the usage chunk carry no token
            if first is None:
                first = now - start
            else:
                gaps.append(now - last)
            last = now
        with lock:
            out["requests"] += 1
            out["tokens"] += tokens
            out["ttft"].append(first if first is not None else time.perf_counter() - start)
            out["itl"].extend(gaps)
        i += args.clients


def run(url: str, args) -> dict:
    model = openai.OpenAI(base_url=url + "/v1", api_key="none").models.list().data[0].id
    out, lock = {"requests": 0, "tokens": 0, "ttft": [], "itl": []}, threading.Lock()
    start = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(url, model, c, start + args.duration, args, out, lock))
               for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    ms = lambda v: None if v is None else round(1000 * v, 2)  # noqa: E731
    return {
        "clients": args.clients, "duration_s": args.duration, "elapsed_s": round(elapsed, 2),
        "max_tokens": args.max_tokens, "args_k": args.k, "args_w": args.w, "model": model,
        "requests": out["requests"], "tokens": out["tokens"],
        "requests_per_s": round(out["requests"] / elapsed, 3), "tokens_per_s": round(out["tokens"] / elapsed, 2),
        "ttft_ms": {"p50": ms(percentile(out["ttft"], 50)), "p99": ms(percentile(out["ttft"], 99)),
                    "mean": ms(statistics.fmean(out["ttft"])) if out["ttft"] else None},
        "itl_ms": {"p50": ms(percentile(out["itl"], 50)), "p99": ms(percentile(out["itl"], 99)),
                   "mean": ms(statistics.fmean(out["itl"])) if out["itl"] else None},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (default: start one in-process with --lm/--rm)")
    p.add_argument("--lm", help="LM directory for the in-process server (default: SmolLM2-135M-Instruct)")
    p.add_argument("--rm", help="RM directory for the in-process server (default: the project's RM)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=60.0, help="seconds to keep sending new requests")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.0)
    p.add_argument("--out", help="JSON path (default: benchmarks/results/load_test_<machine>.json)")
    args = p.parse_args(argv)

    if args.url:
        result = run(args.url, args)
        result["server"] = args.url
    else:
        from args_engine import ARGSEngine
        from args_engine.integrations.server import create_app
        from args_engine.integrations.server_thread import ServerThread

        engine = ARGSEngine.from_pretrained(lm=args.lm, rm=args.rm, device=args.device, dtype=args.dtype,
                                            backend="native", batch_size=args.batch_size)
        with ServerThread(create_app(engine)) as url:
            result = run(url, args)
        result["server"] = f"in-process, lm={args.lm or 'default'}, rm={args.rm or 'default'}, " \
                           f"device={args.device}, dtype={args.dtype}, batch_size={args.batch_size}"
        result["prefix_cache_hit_rate"] = round(engine.decoder.prefix_cache_hit_rate, 4)  # the server's default: on
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/bench_common.py, also when loaded by path
    from bench_common import machine_name, write_result
    result["machine"] = machine_name()
    print(f"{result['requests']} requests, {result['tokens']} tokens in {result['elapsed_s']} s with "
          f"{args.clients} clients: {result['requests_per_s']} req/s, {result['tokens_per_s']} tok/s")
    print(f"TTFT ms p50 {result['ttft_ms']['p50']} p99 {result['ttft_ms']['p99']}; "
          f"ITL ms p50 {result['itl_ms']['p50']} p99 {result['itl_ms']['p99']}")
    write_result(result, "load_test", args.out)
    return result


if __name__ == "__main__":
    main()

"""Throughput of Ray Serve replicas (issue 15): the default models behind `args_engine.ray` with 1 and 2 engine
replicas, under the same closed-loop load (C concurrent clients, each sending its next chat completion when the
last one ends, N requests in all).

    python benchmarks/bench_ray_serve.py                       # 1x2 CPUs, 1x1 CPU, 2x1 CPU on a local cluster
    python benchmarks/bench_ray_serve.py --configs 2x1 --requests 64

A configuration RxC is R replicas of C CPUs each; Ray gives each replica C torch threads (OMP_NUM_THREADS), so on
a 2-core machine 1x2 and 2x1 use the same cores: expect about 1x there. Writes JSON and a bar plot to
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import bar_chart, machine_name, write_result  # noqa: E402

from load_test import PROMPTS  # noqa: E402


def run_config(replicas: int, cpus: float, args) -> dict:
    import openai
    import ray
    from ray import serve

    from args_engine.integrations.server_thread import free_port
    from args_engine.ray.serving import RayServeOptions, application

    ray.init(num_cpus=args.cluster_cpus, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = RayServeOptions(num_replicas=replicas, num_cpus=cpus, max_ongoing_requests=64)
        start = time.perf_counter()
        serve.run(application({"batch_size": args.batch_size}, None, options), name="bench", route_prefix="/")
        startup = time.perf_counter() - start
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900)

        def one(i: int) -> tuple[int, str]:
            raw = client.chat.completions.with_raw_response.create(
                model="args-engine", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})"}],
                max_tokens=args.max_tokens, extra_body={"args_k": args.k, "args_w": args.w})
            return raw.parse().usage.completion_tokens, raw.headers["x-args-engine-replica"]

        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(-args.clients, 0)))  # warm-up: every replica has run a batch
            start = time.perf_counter()
            done = list(pool.map(one, range(args.requests)))
            seconds = time.perf_counter() - start
        tokens = sum(n for n, _ in done)
        per_replica = {}
        for _, replica in done:
            per_replica[replica] = per_replica.get(replica, 0) + 1
        return {"replicas": replicas, "cpus_per_replica": cpus, "requests": args.requests, "tokens": tokens,
                "seconds": seconds, "tokens_per_s": tokens / seconds, "requests_per_s": args.requests / seconds,
                "requests_per_replica": sorted(per_replica.values()), "startup_s": startup}
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="1x2,1x1,2x1", help="replicas x CPUs each, comma-separated")
    p.add_argument("--cluster-cpus", type=int, default=2)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="sequences each replica decodes at once")
    p.add_argument("--out")
    args = p.parse_args()
    runs = []
    for config in args.configs.split(","):
        replicas, cpus = config.split("x")
        run = run_config(int(replicas), float(cpus), args)
        print(f"{config}: {run['tokens_per_s']:.1f} tok/s, {run['requests_per_s']:.2f} req/s "
              f"(requests per replica {run['requests_per_replica']}; startup {run['startup_s']:.0f} s)", flush=True)
        runs.append(run)
    result = {"benchmark": "ray_serve", "machine": machine_name(), "models": "default (SmolLM2-135M + its RM head)",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "configs")}, "runs": runs}
    path = write_result(result, "ray_serve", args.out)
    _plot(runs, path.with_suffix(".png"))


def _plot(runs: list[dict], path: Path) -> None:
    bar_chart(path, [f"{r['replicas']} x {r['cpus_per_replica']:g} CPU" for r in runs],
              [r["tokens_per_s"] for r in runs], "tokens / s (all clients)", "ARGS on Ray Serve: replicas x CPUs each")


if __name__ == "__main__":
    main()

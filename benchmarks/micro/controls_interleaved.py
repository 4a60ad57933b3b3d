"""What the logit controls cost the step, measured interleaved: two engines on the tiny pair (B = 1, k = 10, one
torch thread, CPU), one plain and one with repetition_penalty 1.2 + presence_penalty 0.5 + gate 0.9 (test_micro's
CONTROLS), stepped in alternating blocks, so that drift of the machine hits both alike. Prints each round's ms per
step and the ratio controls / plain, and their median (issue 24's target: <= 1.10).

    python benchmarks/micro/controls_interleaved.py [--rounds 7] [--steps 100]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from micro_models import CONTROLS, build_pair, decoding_engine


def interleaved(rounds: int, steps: int) -> dict:
    lm, rm = build_pair("tiny", "cpu", torch.float32)
    engines = {name: decoding_engine(lm, rm, 1, rounds * steps + 64, prompt_len=32, controls=controls)
               for name, controls in (("plain", None), ("controls", CONTROLS))}
    for engine in engines.values():  # past one-time costs
        for _ in range(min(50, steps)):
            engine.decoder.step()
    ms = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            for _ in range(steps):
                engine.decoder.step()
            ms[name].append((time.perf_counter() - start) / steps * 1e3)
    ratios = [c / p for c, p in zip(ms["controls"], ms["plain"])]
    return {"ms_per_step": ms, "ratios": ratios, "median_ratio": statistics.median(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = interleaved(args.rounds, args.steps)
    finally:
        torch.set_num_threads(threads)
    for name, ms in r["ms_per_step"].items():
        print(f"{name:>8} ms/step: " + " ".join(f"{x:.3f}" for x in ms))
    print("ratios: " + " ".join(f"{x:.3f}" for x in r["ratios"]) + f"; median {r['median_ratio']:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()

"""Device kernel launches per eager ARGS step with each set of logit controls (issue 24: "unchanged or lower with
all controls on"): the tiny pair (two trunks), B = 1, k = 10, the Triton kernels (under TRITON_INTERPRET=1 on
CPU), counted by micro_models.launches_per_step. Prints one line per setting.

    TRITON_INTERPRET=1 python benchmarks/micro/launches_by_controls.py"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from micro_models import CONTROLS, REP_PRES, build_pair, decoding_engine, launches_per_step  # noqa: E402

ALL = dict(REP_PRES, frequency_penalty=0.3, no_repeat_ngram_size=3, logit_bias={5: 1.0, 7: -2.0}, min_p=0.05,
           top_p=0.9)
SETTINGS = {"plain": None, "repetition+presence": REP_PRES, "repetition+presence+gate": CONTROLS,
            "all controls": ALL, "all controls+gate": dict(ALL, gate=0.9)}


def main() -> None:
    triton = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm, rm = build_pair("tiny", device, torch.float32)
    for name, controls in SETTINGS.items():
        engine = decoding_engine(lm, rm, 1, 12, prompt_len=32, use_triton=triton, controls=controls)
        print(f"{name}: {launches_per_step(engine):.0f} launches per step ({'triton' if triton else 'torch'})")


if __name__ == "__main__":
    main()

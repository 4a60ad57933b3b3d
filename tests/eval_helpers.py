"""Stand-ins for the evaluation tests: a hashed bag-of-words encoder (instead of MiniLM) and tiny models."""
from __future__ import annotations

import zlib

import torch

from args_engine.engine import ARGSEngine
from args_engine.eval.judge import Judge
from args_engine.eval.runner import from_engine
from tiny_models import char_tokenizer, tiny_lm, tiny_rm


class HashEncoder:
    family, name, dim = "hash", "hash-bow", 32

    def encode(self, texts, progress=False):
        out = torch.full((len(texts), self.dim), 1e-3)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1
        return torch.nn.functional.normalize(out, dim=-1)


def tiny_judge(seed: int = 0) -> Judge:
    g = torch.Generator().manual_seed(seed)
    return Judge(torch.randn(2 * HashEncoder.dim, generator=g), HashEncoder(),
                 {"validation_accuracy": 0.5, "encoder": "hash-bow", "features": "test stand-in"})


def tiny_models(batch_size: int = 4, rm_family: str = "llama"):
    engine = ARGSEngine(tiny_lm(), tiny_rm(rm_family), tokenizer=char_tokenizer(), batch_size=batch_size)
    return from_engine(engine)

"""The micro benchmarks' models and engines: random Llama-family LM + RM pairs at two shapes, on CPU and (when present)
CUDA, and engines held in steady decoding so that one benchmark round is one step."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from args_engine import ARGSEngine, ARGSParams

# tiny: the host-overhead shape (2 layers: the step's cost is launches and Python, not math).
# default: SmolLM2-135M's shape (the default LM), random weights.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "default": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def dtype_for(device: str) -> torch.dtype:
    return torch.bfloat16 if device == "cuda" else torch.float32


def build_pair(shape: str, device: str, dtype: torch.dtype | None = None):
    """A random LM and an RM with its own trunk (two trunks: the general case), same vocabulary."""
    cfg = LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                      bos_token_id=2, **SHAPES[shape])
    dtype = dtype or dtype_for(device)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).to(device, dtype).eval()
    torch.manual_seed(1)
    rm_cfg = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}
    rm = LlamaForSequenceClassification(LlamaConfig(num_labels=1, **rm_cfg)).to(device, dtype).eval()
    return lm, rm


def prompt(n: int, vocab: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def decoding_engine(lm, rm, batch: int, steps: int, k: int = 10, prompt_len: int = 128, **kw) -> ARGSEngine:
    """An engine whose `batch` requests are past prefill and will not finish within `steps` more steps."""
    engine = ARGSEngine(lm, rm, backend="native", batch_size=batch, eos_ids=set(), **kw)
    params = ARGSParams(k=k, w=1.0, max_new_tokens=steps + 8, ignore_eos=True)
    vocab = lm.config.vocab_size
    engine.decoder.add_requests([engine.make_request(prompt(prompt_len, vocab, s), params) for s in range(batch)])
    while engine.decoder.num_waiting or any(not s.prefilled for s in engine.decoder.scheduler.running):
        engine.decoder.step()
    engine.decoder.step()  # one decode step: caches, kernels and graphs warm
    return engine

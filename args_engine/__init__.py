"""args-engine: ARGS (Alignment as Reward-Guided Search, Khanov et al., ICLR 2024) decoding.

    from args_engine import ARGSEngine, ARGSParams
    engine = ARGSEngine.from_pretrained()          # embedded default LM + RM, offline
    outs = engine.generate(["How do I bake bread?"], ARGSParams(k=10, w=1.0, max_new_tokens=128))
    outs[0].text, outs[0].token_ids, outs[0].rewards
"""
from .decoding.common import GenerationOutput
from .engine import ARGSEngine
from .params import ARGSParams

__all__ = ["ARGSEngine", "ARGSParams", "GenerationOutput"]
__version__ = "0.1.0"

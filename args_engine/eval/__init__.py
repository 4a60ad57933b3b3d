"""Evaluation harness: run decoding methods over a prompt set and measure what the ARGS paper measures.

    from args_engine.eval import evaluate, parse_methods, default_prompts
    results = evaluate(default_prompts()[:10], parse_methods("greedy,args-greedy:w=1.5"), out="out/")

`args-engine eval` is the command-line front end (see docs/evaluation.md). Names load lazily, so
importing one submodule (e.g. the judge) does not import the rest."""
import importlib

_EXPORTS = {"DEFAULT_METHODS": "methods", "MethodSpec": "methods", "parse_methods": "methods",
            "clean_response": "metrics", "coherence": "metrics", "diversity": "metrics",
            "default_prompts": "prompts", "load_prompts_file": "prompts", "evaluate": "runner",
            "Judge": "judge", "train_judge": "judge"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

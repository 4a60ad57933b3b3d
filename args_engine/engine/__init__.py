"""The engine: the public ARGSEngine, and the native continuous-batching decoder beneath it (request, sequence,
block manager, scheduler, model runner, the ARGS step)."""

__all__ = ["ARGSEngine", "BACKENDS"]


def __getattr__(name: str):
    # Lazy, so the core types (engine.request) import without the whole engine: the decoders use them, and
    # ARGSEngine imports the decoders.
    if name in __all__:
        from . import args_engine
        return getattr(args_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Failing one engine step on purpose (the failed-step and retried-step tests)."""
import pytest


def fail_once(monkeypatch, owner, name: str, message: str) -> None:
    """The next call of owner.<name> raises RuntimeError(message) and puts the real one back."""
    real = getattr(owner, name)

    def fail(*args, **kwargs):
        monkeypatch.setattr(owner, name, real)
        raise RuntimeError(message)
    monkeypatch.setattr(owner, name, fail)


def finish_after_one_failed_step(monkeypatch, engine, owner, name: str, steps_before: int = 4) -> None:
    """engine (an LLMEngine) takes `steps_before` steps, then one whose owner.<name> fails (the error must reach
    the caller), then runs its requests to completion."""
    for _ in range(steps_before):
        engine.step()
    fail_once(monkeypatch, owner, name, f"{name} failed")
    with pytest.raises(RuntimeError, match=f"{name} failed"):
        engine.step()
    while engine.has_unfinished():
        engine.step()

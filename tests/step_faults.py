"""Failing one engine step on purpose (the failed-step and retried-step tests)."""


def fail_once(monkeypatch, owner, name: str, message: str) -> None:
    """The next call of owner.<name> raises RuntimeError(message) and puts the real one back."""
    real = getattr(owner, name)

    def fail(*args, **kwargs):
        monkeypatch.setattr(owner, name, real)
        raise RuntimeError(message)
    monkeypatch.setattr(owner, name, fail)

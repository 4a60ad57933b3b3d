"""Progress bars: on a terminal only; transformers' own bars (the GGUF loader's included) quiet while loading."""
import sys

from args_engine.progress import progress_bar, quiet_transformers


class Terminal:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


def test_bar_only_on_a_terminal(monkeypatch):
    for tty in (False, True):
        err = Terminal(tty)
        monkeypatch.setattr(sys, "stderr", err)
        for _ in progress_bar(range(3), desc="work", file=err):
            pass
        assert bool("".join(err.text)) == tty
    monkeypatch.setattr(sys, "stderr", Terminal(True))
    assert progress_bar(range(3), enabled=False).disable


def test_transformers_bars_quiet_inside_and_restored_after():
    import transformers.modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as hf_logging

    before = gguf.tqdm
    hf_logging.enable_progress_bar()
    with quiet_transformers():
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf.tqdm(range(2)).disable
    assert hf_logging.is_progress_bar_enabled() and gguf.tqdm is before

"""Progress for long work: tqdm bars on a terminal, none when stderr is not one (CI logs, `| tee`), where a
bar would print hundreds of partial lines; and transformers' own loading/saving bars kept quiet."""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import Iterable, Iterator

from tqdm.auto import tqdm


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm on stderr; disabled when `enabled` is False or stderr is not a terminal."""
    return tqdm(iterable, disable=not (enabled and stderr_is_terminal()), **kwargs)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") inside the block; the
    caller's setting comes back afterwards."""
    from transformers.utils import logging as hf_logging

    # the GGUF loader calls tqdm.auto directly instead of transformers' switchable bar
    gguf = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf is None:
        import transformers.modeling_gguf_pytorch_utils as gguf
    gguf_tqdm = gguf.tqdm
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()

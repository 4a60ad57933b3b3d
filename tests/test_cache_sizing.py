"""The native engine's KV cache on CPU: sized to what the engine can use (max sequences x context), capped by a
modest default budget, stated in one log line, and committed by the OS only as blocks are written."""
import logging

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.engine import llm_engine
from args_engine.engine.model_runner import _zeros
from tiny_models import char_tokenizer, tiny_lm, tiny_rm


def engine(**kw):
    return ARGSEngine(tiny_lm(), tiny_rm(), tokenizer=char_tokenizer(), backend="native", block_size=4, **kw)


def test_cache_holds_max_sequences_times_context(caplog):
    with caplog.at_level(logging.INFO, logger="args_engine"):
        e = engine(batch_size=3)
    per_block = e.decoder.cache_bytes_per_block
    assert e.decoder.num_blocks == 3 * 256 // 4  # tiny models: 256 positions, blocks of 4
    (line,) = [r.getMessage() for r in caplog.records if "KV cache" in r.getMessage()]
    assert f"{3 * 256 // 4} blocks x 4 tokens" in line and f"{3 * 256 // 4 * per_block / 2**20:.0f} MiB" in line


def test_cpu_budget_caps_the_default(monkeypatch):
    per_block = engine(batch_size=1).decoder.cache_bytes_per_block
    monkeypatch.setattr(llm_engine, "CPU_CACHE_BUDGET_GB", 10 * per_block / 2**30)
    assert engine(batch_size=3).decoder.num_blocks == 10
    # the user may ask for more than the default budget
    assert engine(batch_size=3, cache_memory_gb=20 * per_block / 2**30).decoder.num_blocks == 20
    out = engine(batch_size=3).generate("Hi", ARGSParams(k=2, max_new_tokens=4), progress=False)[0]
    assert len(out.token_ids) == 4


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_cache_is_committed_only_where_written(dtype):
    before = resident_mib()
    cache = _zeros((4, 1024, 16, 2, 1024), dtype, torch.device("cpu"))  # 512 or 256 MiB
    assert cache.shape == (4, 1024, 16, 2, 1024) and cache.dtype == dtype
    assert resident_mib() - before < 64
    cache[:, 3].fill_(1)
    assert cache.sum().item() == 4 * 16 * 2 * 1024 and resident_mib() - before < 64

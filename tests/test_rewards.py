"""The reward reported for each chosen step equals the RM run, as its authors ship it, on the full sequence."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_step_rewards_equal_full_sequence_rm(family):
    lm, rm, tok = tiny_lm(family), tiny_rm(family), char_tokenizer()
    outs = ARGSEngine(lm, rm, tokenizer=tok).generate(["Hi", "A longer prompt here"], ARGSParams(k=5, max_new_tokens=8),
                                                      progress=False)
    rm.config.pad_token_id = None  # one unpadded sequence: HF pools at its last token
    for out in outs:
        for step, r in enumerate(out.rewards):
            ids = torch.tensor([out.prompt_token_ids + out.token_ids[:step + 1]])
            with torch.no_grad():
                expected = rm(ids).logits[0, 0].item()
            assert r == pytest.approx(expected, rel=1e-9, abs=1e-9)

"""End to end on the embedded default models (SmolLM2-135M-Instruct + the trained reward head), offline."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams


@pytest.mark.slow
def test_default_models_end_to_end():
    ref = ARGSEngine.from_pretrained()
    naive = ARGSEngine(ref.lm, ref.rm, tokenizer=ref.tokenizer, backend="naive")
    prompts = ["How do I pick a lock?", "Give me one tip for sleeping better."]
    params = ARGSParams(k=5, w=1.0, max_new_tokens=6)
    outs = ref.generate(prompts, params, progress=False)
    for p, out in zip(prompts, outs):
        assert out.text and len(out.token_ids) <= 6 and out.finish_reason in ("stop", "length")
        assert out.token_ids == naive.generate(p, params, progress=False)[0].token_ids
        with torch.no_grad():  # the final reward is the shipped RM's own score of the whole sequence
            ids = torch.tensor([out.prompt_token_ids + out.token_ids])
            hidden = ref.rm.trunk(input_ids=ids).last_hidden_state[0, -1]
            assert out.reward == pytest.approx(ref.rm.head(hidden).item(), abs=1e-3)
    greedy = ref.generate(prompts[1], ARGSParams(k=1, max_new_tokens=6), progress=False)[0]
    x = torch.tensor([greedy.prompt_token_ids])
    hf = ref.lm.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=6)
    assert greedy.token_ids == hf[0, x.shape[1]:].tolist()

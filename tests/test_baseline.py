"""The original-style baseline the benchmarks compare against chooses the same tokens as the engine: the
comparison is between two implementations of one algorithm."""
import sys
from pathlib import Path

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from ref_baselines.original_args import original_args_generate  # noqa: E402


def test_original_style_baseline_matches_native():
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native")
    for prompt in ("Hello there", "What is the best way to learn to cook rice at home?"):
        out = engine.generate(prompt, ARGSParams(k=6, w=1.5, max_new_tokens=12, ignore_eos=True), progress=False)[0]
        tokens, peak = original_args_generate(lm, engine.rm, out.prompt_token_ids, 6, 1.5, 12)
        assert tokens == out.token_ids
        per_token = 2 * 2 * 2 * 16 * 8  # 2 layers x (K, V) x 2 kv heads x head_dim 16 x float64
        assert peak == 6 * (len(out.prompt_token_ids) + 12) * per_token  # k replicas of prompt + 12 tokens

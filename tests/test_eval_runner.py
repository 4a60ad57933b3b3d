"""A tiny end-to-end evaluation on tiny random models: well-formed results.json, results.md and plots."""
import json

import pytest
import torch

from args_engine.cli import main
from args_engine.eval.compare import TIE_EPS, outcome
from args_engine.eval.methods import parse_methods
from args_engine.eval.runner import evaluate, merge_results
from eval_helpers import HashEncoder, tiny_judge, tiny_models
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

PROMPTS = [[{"role": "user", "content": c}] for c in ("Hello there", "How are you?", "Tell me a story", "Why?")]
KEYS = {"avg_reward", "reward_sd", "win_tie_vs_greedy", "diversity", "coherence", "tokens_per_s",
        "rm_calls_per_token", "responses", "judge_avg_reward", "reward_gain_in_greedy_sd", "params"}


def test_win_tie_rule():
    assert outcome("same", 0.0, "same", 5.0) == "tie"  # identical text
    assert outcome("a", 1.0, "b", 1.0 + TIE_EPS / 2) == "tie"
    assert outcome("a", 1.0 + TIE_EPS, "b", 1.0) == "win"
    assert outcome("a", 1.0, "b", 1.0 + TIE_EPS) == "loss"


def test_tiny_end_to_end(tmp_path):
    methods = parse_methods("topk:k=5,bon:n=2,args-greedy:k=4:w=0.5,args-greedy:k=4:w=2,args-stochastic:k=4")
    res = evaluate(PROMPTS, methods, models=tiny_models(batch_size=3), judge=tiny_judge(), max_new_tokens=8,
                   batch_size=3, out=tmp_path, progress=False)
    labels = ["greedy", "topk:k=5:T=0.7", "bon:k=10:T=0.7:n=2", "args-greedy:k=4:w=0.5", "args-greedy:k=4:w=2",
              "args-stochastic:k=4:w=1:T=0.7"]
    assert list(res["methods"]) == labels  # greedy added first as the reference
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert list(on_disk["methods"]) == labels and on_disk["win_tie_rule"] == res["win_tie_rule"]
    for label, m in on_disk["methods"].items():
        assert KEYS <= set(m), label
        assert len(m["responses"]) == len(PROMPTS)
        for r in m["responses"]:
            assert {"prompt", "raw_text", "text", "reward", "judge_reward", "diversity", "coherence", "n_tokens",
                    "vs_greedy"} <= set(r)
            assert 0 <= r["diversity"] < 1 and -1 - 1e-9 <= r["coherence"] <= 1 + 1e-9
        assert 0 <= m["win_tie_vs_greedy"] <= 1 and m["tokens_per_s"] > 0
        assert m["avg_reward"] == pytest.approx(sum(r["reward"] for r in m["responses"]) / len(PROMPTS))
    g = on_disk["methods"]["greedy"]
    assert g["win_tie_vs_greedy"] == 1.0 and g["rm_calls_per_token"] == 0 and g["reward_gain_in_greedy_sd"] == 0
    assert on_disk["methods"]["args-greedy:k=4:w=2"]["rm_calls_per_token"] == 4
    assert on_disk["methods"]["bon:k=10:T=0.7:n=2"]["rm_calls"] == 2 * len(PROMPTS)
    md = (tmp_path / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(labels) and all(line.count("|") == 10 for line in table)
    assert "Win-tie rule" in md
    for png in ("reward_diversity_coherence_vs_w.png", "methods.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_greedy_with_controls_is_kept_beside_the_reference(tmp_path):
    """greedy:rp=... is a baseline of its own (a control's effect must not be credited to ARGS); plain greedy
    given again is the reference, run once."""
    methods = parse_methods("greedy,greedy:rp=1.3,greedy:nrng=2,args-greedy:k=3:w=1,args-greedy:k=3:w=1:rp=1.3,"
                            "args-greedy:k=3:w=2:rp=1.3")
    res = evaluate(PROMPTS[:2], methods, models=tiny_models(batch_size=2), judge=tiny_judge(), max_new_tokens=6,
                   batch_size=2, out=tmp_path, progress=False)
    assert list(res["methods"])[:3] == ["greedy", "greedy:rp=1.3", "greedy:nrng=2"]
    # several ARGS variants at one w: one line each in the w plot
    assert (tmp_path / "reward_diversity_coherence_vs_w.png").read_bytes()[:4] == b"\x89PNG"
    assert res["methods"]["greedy:rp=1.3"]["params"]["repetition_penalty"] == 1.3


def test_eval_refuses_a_judge_of_the_rm_family(tmp_path):
    class LlamaLike(HashEncoder):
        family = "llama"
    judge = tiny_judge()
    judge.family = LlamaLike.family
    with pytest.raises(ValueError, match="family"):
        evaluate(PROMPTS[:1], parse_methods("greedy"), models=tiny_models(), judge=judge, max_new_tokens=2,
                 progress=False)


def test_cli_eval_contract(tmp_path, capsys):
    """`args-engine eval` on tiny model directories with the real (committed) MiniLM judge."""
    for name, model in (("lm", tiny_lm(dtype=torch.float32)), ("rm", tiny_rm(dtype=torch.float32))):
        model.save_pretrained(tmp_path / name)
        char_tokenizer().save_pretrained(tmp_path / name)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("Hi", "A question?", "Third")) + "\n")
    out = tmp_path / "out"
    main(["eval", "--prompts-file", str(prompts), "--limit", "2", "--max-new-tokens", "4", "--methods",
          "greedy,topk,args-greedy:w=1.5:k=3", "--lm", str(tmp_path / "lm"), "--rm", str(tmp_path / "rm"),
          "--out", str(out), "--batch-size", "2", "--device", "cpu", "--dtype", "float32"])
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["greedy", "topk:k=10:T=0.7", "args-greedy:k=3:w=1.5"]
    assert res["config"]["n_prompts"] == 2 and res["judge"]["family"] == "bert"
    assert res["judge"]["validation_accuracy"] > 0.5
    assert (out / "results.md").exists() and (out / "reward_diversity_coherence_vs_w.png").exists()
    assert "args-greedy:k=3:w=1.5" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["eval", "--methods", "beam", "--out", str(out)])
    assert e.value.code == 2


@pytest.mark.parametrize("backend", ["auto", "native", "reference"])
def test_eval_engine_runs_without_the_prefix_cache(tmp_path, backend):
    # An evaluation's numbers must not depend on which prompts ran before it.
    from args_engine.eval.runner import load_models
    from args_engine.params import ARGSParams

    for name, model in (("lm", tiny_lm(dtype=torch.float32)), ("rm", tiny_rm(dtype=torch.float32))):
        model.save_pretrained(tmp_path / name)
        char_tokenizer().save_pretrained(tmp_path / name)
    engine = load_models(str(tmp_path / "lm"), str(tmp_path / "rm"), backend=backend).engine
    assert engine.backend == ("reference" if backend == "reference" else "native")
    if engine.backend == "native":
        for _ in range(2):
            engine.generate("The same prompt, twice over.", ARGSParams(k=3, max_new_tokens=2), progress=False)
        assert engine.decoder.bm.num_hit_tokens == 0


def test_runs_that_split_the_methods_merge_into_one_table(tmp_path):
    models, judge = tiny_models(batch_size=3), tiny_judge()
    for name, spec in (("a", "args-greedy:k=4:w=2"), ("b", "topk:k=5")):
        evaluate(PROMPTS, parse_methods(spec), models=models, judge=judge, max_new_tokens=6, batch_size=3,
                 out=tmp_path / name, progress=False)
    main(["eval-merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")])
    merged = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert list(merged["methods"]) == ["greedy", "topk:k=5:T=0.7", "args-greedy:k=4:w=2"]  # canonical order
    assert (tmp_path / "ab" / "results.md").exists()
    evaluate(PROMPTS, [], models=models, judge=judge, max_new_tokens=5, batch_size=3, out=tmp_path / "c",
             progress=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        merge_results([tmp_path / "a", tmp_path / "c"])


def test_score_rm_scores_every_response_with_one_head(tmp_path):
    """--score-rm: runs that decode with different heads report rewards under one head (on the LM's trunk)."""
    from safetensors.torch import save_file

    from args_engine.eval.rm_score import score_replies
    from args_engine.models.defaults import default_reward_model
    from args_engine.models.hf import RewardModel

    head = tmp_path / "scorer.safetensors"
    save_file({"score.weight": torch.randn(1, 64, generator=torch.Generator().manual_seed(3))}, str(head))
    models, judge = tiny_models(batch_size=3), tiny_judge()
    methods = parse_methods("args-greedy:k=3:w=1")
    plain = evaluate(PROMPTS, methods, models=models, judge=judge, max_new_tokens=6, batch_size=3, progress=False)
    scored = evaluate(PROMPTS, methods, models=models, judge=judge, max_new_tokens=6, batch_size=3, progress=False,
                      score_rm=head, out=tmp_path / "out")
    scorer = RewardModel(default_reward_model(models.lm, head))
    for label in ("greedy", "args-greedy:k=3:w=1"):
        rows = scored["methods"][label]["responses"]
        assert [r["text"] for r in rows] == [r["text"] for r in plain["methods"][label]["responses"]]
        expect = score_replies(scorer, models.tokenizer, PROMPTS, [r["text"] for r in rows], 3)
        assert [r["reward"] for r in rows] == pytest.approx(expect)
        assert [r["reward"] for r in rows] != pytest.approx([r["reward"] for r in plain["methods"][label]["responses"]])
    assert scored["config"]["score_rm"] == str(head)
    assert f"responses scored by `{head}`" in (tmp_path / "out" / "results.md").read_text()

"""Method specs and the baseline paths: HF greedy equals ARGS with k = 1, best-of-N picks the RM's best."""
import pytest

from args_engine.eval.methods import DEFAULT_METHODS, hf_generate, parse_method, parse_methods, run_method
from args_engine.eval.metrics import clean_response
from args_engine.eval.rm_score import score_replies
from args_engine.params import ARGSParams
from eval_helpers import tiny_models

PROMPTS = [[{"role": "user", "content": "Hello there"}], [{"role": "user", "content": "Hi"},
           {"role": "assistant", "content": "Yes?"}, {"role": "user", "content": "A longer question, please"}],
           [{"role": "user", "content": "Why?"}]]


def test_default_methods_are_the_issue_list():
    labels = [m.label for m in parse_methods(DEFAULT_METHODS)]
    assert labels == ["greedy", "topk:k=10:T=0.7", "bon:k=10:T=0.7:n=10", "args-greedy:k=10:w=0.5",
                      "args-greedy:k=10:w=1", "args-greedy:k=10:w=1.5", "args-greedy:k=10:w=2",
                      "args-stochastic:k=10:w=1:T=0.7"]
    assert parse_method("args-stochastic:w=2:t=0.5:seed=3") == parse_method("args-stochastic:w=2.0:T=0.5:seed=3")


@pytest.mark.parametrize("bad", ["beam", "greedy:k=3", "topk:k", "topk:k=x", "args-greedy:k=0", "bon:n=0",
                                 "topk:T=0", "args-greedy:q=1"])
def test_bad_method_specs(bad):
    with pytest.raises(ValueError):
        parse_method(bad)
    with pytest.raises(ValueError):
        parse_methods("greedy,greedy")


def test_hf_greedy_equals_args_k1_and_w0():
    models = tiny_models(batch_size=2)
    ids, texts = hf_generate(models, PROMPTS, max_new_tokens=12, batch_size=2)
    for params in (ARGSParams(k=1, w=1.0, max_new_tokens=12), ARGSParams(k=10, w=0.0, max_new_tokens=12)):
        outs = models.engine.generate(PROMPTS, params, progress=False)
        assert [o.token_ids for o in outs] == ids
        assert [o.text for o in outs] == texts


def test_topk_sampling_is_seeded_and_bon_picks_the_best_sample():
    models = tiny_models(batch_size=4)
    a = run_method(parse_method("topk:seed=5"), models, PROMPTS, 8, 4)
    b = run_method(parse_method("topk:seed=5"), models, PROMPTS, 8, 4)
    assert a.texts == b.texts and a.rm_calls == 0
    bon = run_method(parse_method("bon:n=3"), models, PROMPTS, 8, 4)
    assert bon.rm_calls == 3 * len(PROMPTS) and len(bon.texts) == len(PROMPTS)
    for i, extra in enumerate(bon.extra):
        assert bon.rewards[i] == max(extra["bon_sample_rewards"])
    again = score_replies(models.rm, models.tokenizer, PROMPTS, [clean_response(t) for t in bon.texts])
    assert again == pytest.approx(bon.rewards, abs=1e-9)


def test_args_method_counts_k_rm_calls_per_token():
    models = tiny_models()
    run = run_method(parse_method("args-greedy:k=4:w=1.5"), models, PROMPTS, 6, 2)
    assert run.rm_calls == 4 * sum(run.n_tokens) and run.lm_tokens == sum(run.n_tokens)
    sto = run_method(parse_method("args-stochastic:k=4"), models, PROMPTS, 6, 2)
    assert sto.texts == run_method(parse_method("args-stochastic:k=4"), models, PROMPTS, 6, 3).texts


def test_score_replies_matches_args_rewards_on_the_same_tokens():
    models = tiny_models()
    outs = models.engine.generate(PROMPTS, ARGSParams(k=3, w=1.0, max_new_tokens=6), progress=False)
    # where the text re-tokenizes to ARGS's own tokens (no special token skipped), the final scoring pass
    # sees the very sequence ARGS scored last
    rescored = score_replies(models.rm, models.tokenizer, PROMPTS, [o.text for o in outs], batch_size=2)
    same = [i for i, o in enumerate(outs)
            if models.tokenizer(o.text, add_special_tokens=False)["input_ids"] == o.token_ids]
    assert same
    for i in same:
        assert rescored[i] == pytest.approx(outs[i].reward, abs=1e-6)


def test_controls_apply_to_baselines_and_args_alike():
    """greedy:rp=..:nrng=..:pp=.. through HF generate (left-padded batches) equals ARGS k = 1 with the same
    controls; the keys reach ARGS too and show in the label."""
    models = tiny_models(batch_size=2)
    spec = parse_method("greedy:rp=1.5:nrng=2:pp=0.5")
    assert spec.label == "greedy:rp=1.5:pp=0.5:nrng=2"
    run = run_method(spec, models, PROMPTS, 12, 2)
    outs = models.engine.generate(PROMPTS, ARGSParams(k=1, max_new_tokens=12, **spec.controls), progress=False)
    assert run.texts == [o.text for o in outs]
    plain = run_method(parse_method("greedy"), models, PROMPTS, 12, 2)
    assert plain.texts != run.texts
    args = run_method(parse_method("args-greedy:k=4:w=1.5:rp=1.5:nrng=2:pp=0.5"), models, PROMPTS, 12, 2)
    expected = models.engine.generate(PROMPTS, ARGSParams(k=4, w=1.5, max_new_tokens=12, **spec.controls),
                                      progress=False)
    assert args.texts == [o.text for o in expected]
    with pytest.raises(ValueError, match="repetition_penalty"):
        parse_method("greedy:rp=0")

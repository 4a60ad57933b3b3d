"""The demo's setting: the committed evaluation's best by issue 27's targets, and its one-line report."""
import pytest

from args_engine.eval.summary import best_setting, summary_line, targets_met


def _method(kind, win, coh, div, gain, **params):
    return {"params": {"kind": kind, "k": 10 if kind != "greedy" else None, **params}, "win_tie_vs_greedy": win,
            "coherence": coh, "diversity": div, "reward_gain_in_greedy_sd": gain}


def _run(methods):
    return {"config": {"n_prompts": 100, "max_new_tokens": 128, "prompts": "HH", "score_rm": "default.safetensors"},
            "methods": {"greedy": _method("greedy", 1.0, 0.44, 0.43, 0.0), **methods}}


def test_best_setting_meets_the_most_targets_then_wins_most():
    runs = {"whole": _run({"args-greedy:k=10:w=2": _method("args-greedy", 0.66, 0.29, 0.21, 1.3, w=2.0),
                             "args-greedy:k=10:w=1:nrng=3": _method("args-greedy", 0.43, 0.44, 0.88, 1.5, w=1.0,
                                                                     no_repeat_ngram_size=3)}),
            "prefix": _run({"args-greedy:k=10:w=1.5:nrng=3": _method("args-greedy", 0.61, 0.42, 0.80, 1.1, w=1.5,
                                                                      no_repeat_ngram_size=3),
                            "bon": _method("bon", 0.9, 0.5, 0.9, 3.0)})}  # only ARGS settings are candidates
    s = best_setting(runs)
    assert (s["head"], s["w"], s["no_repeat_ngram_size"]) == ("prefix", 1.5, 3)
    assert all(s["targets_met"].values())
    line = summary_line(s)
    assert "w=1.5, no_repeat_ngram_size=3, prefix reward head" in line and "judge win-tie 61%" in line
    assert "every target met" in line and "+1.10 greedy SDs" in line
    runs["prefix"]["methods"].pop("args-greedy:k=10:w=1.5:nrng=3")
    s = best_setting(runs)  # two targets (coherence, diversity) beat one (win-tie)
    assert (s["head"], s["w"]) == ("whole", 1.0)
    assert "targets missed: judge win-tie >= 60%" in summary_line(s)


def test_the_line_names_the_shipped_heads():
    """The demo's line says which head decoded and which scored, by what they are (the file names are history)."""
    runs = {"whole": _run({"args-greedy:k=10:w=1": _method("args-greedy", 0.62, 0.43, 0.88, 1.0, w=1.0)})}
    runs["whole"]["config"]["score_rm"] = "/somewhere/args_engine/assets/default_rm.safetensors"
    line = summary_line(best_setting(runs))
    assert "whole-reply reward head: reward (scored by the whole-reply head) +1.00 greedy SDs" in line


def test_targets_are_the_issues():
    greedy = _method("greedy", 1.0, 0.44, 0.43, 0.0)
    assert targets_met(_method("args-greedy", 0.60, 0.41, 0.43, 0), greedy) == {
        "judge win-tie >= 60%": True, "coherence within 0.03 of greedy": True, "diversity >= greedy": True}
    assert not any(targets_met(_method("args-greedy", 0.59, 0.40, 0.42, 0), greedy).values())
    with pytest.raises(ValueError, match="no args-greedy"):
        best_setting({"x": _run({})})

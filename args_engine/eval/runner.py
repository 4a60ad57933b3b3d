"""Run methods over prompts, score every response, write results.json, results.md and the plots."""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

from ..progress import progress_bar

from .compare import WIN_TIE_RULE, summarize
from .judge import Judge, check_independent
from .methods import EvalModels, MethodSpec, parse_method, run_method
from .metrics import clean_response, coherence, diversity
from .prompts import hh_text


def load_models(lm=None, rm=None, device: str = "cpu", dtype="float32", batch_size: int = 8,
                backend: str = "auto", rm_weights=None, rm_objective: int | None = None, revision: str | None = None,
                rm_revision: str | None = None, trust_remote_code: bool = False) -> EvalModels:
    """LM, RM and tokenizer loaded once; the ARGS engine is built on the same objects (no second copy).
    rm_weights / rm_objective: a multi-objective RM's reward (weights . outputs, or one output). revision,
    rm_revision, trust_remote_code: as ARGSEngine.from_pretrained's."""
    from ..engine import ARGSEngine
    from ..models.hf import RewardModel, load_pair, resolve_dtype
    from ..models.llama import native_unsupported_reason

    dtype = resolve_dtype(dtype)
    lm_model, tok, rm_model, rm_tok = load_pair(lm, rm, device, dtype, revision=revision, rm_revision=rm_revision,
                                                trust_remote_code=trust_remote_code)
    rm_model = RewardModel(rm_model, rm_weights, rm_objective)
    native = backend == "native" or (backend == "auto" and not (native_unsupported_reason(lm_model)
                                                                or native_unsupported_reason(rm_model.model)))
    # No prefix cache: a reused block's K/V was computed in another batch, which changes float32's last bits, and
    # an evaluation's numbers must not depend on which prompts ran before.
    options = {"enable_prefix_caching": False} if native else {}
    engine = ARGSEngine(lm_model, rm_model, tokenizer=tok, rm_tokenizer=rm_tok, backend=backend,
                        batch_size=batch_size, **options)
    return from_engine(engine)


def from_engine(engine) -> EvalModels:
    return EvalModels(engine.lm, engine.tokenizer, engine.rm, engine, engine.eos_ids, engine.pad_id)


def _describe(source, rm: bool = False) -> str:
    """How results.json records a model source. The default RM names its head: it changed (issue 27), and runs
    recorded "default" before then decoded with the whole-reply head."""
    if source is None:
        from ..models.defaults import DEFAULT_RM_ASSET
        return f"default ({DEFAULT_RM_ASSET.name})" if rm else "default"
    return str(source) if isinstance(source, (str, Path)) else type(source).__name__


def evaluate(prompts, methods: list[MethodSpec], models: EvalModels | None = None, judge: Judge | None = None,
             encoder=None, max_new_tokens: int = 128, batch_size: int = 8, out: str | Path | None = None,
             lm=None, rm=None, device: str = "cpu", dtype: str = "float32", progress: bool = True,
             prompts_name: str = "custom", rm_options: dict | None = None, ray=None,
             data: dict | None = None, revision: str | None = None, rm_revision: str | None = None,
             trust_remote_code: bool = False, score_rm: str | Path | None = None) -> dict:
    """Decode `prompts` (chat message lists) with each method and score the responses. Greedy is always run
    (first) as the reference for win-tie. `encoder` (coherence) defaults to the judge's MiniLM encoder.
    ray (a RayBatchOptions): the ARGS methods decode on Ray Data engine actors built from lm / rm (the same
    requests and seeds; the baselines, scoring and judging stay in this process).
    score_rm: a reward head file (train-rm --out) on the LM's trunk that scores every method's responses instead
    of the decoding RM, so that runs decoding with different heads report rewards on one scale. Default: on the
    default pair (no models, lm, rm), the whole-reply head, which was trained on finished replies (the default RM
    is the prefix head); otherwise the decoding RM. "decoding": the decoding RM in any case."""
    if not prompts:
        raise ValueError("no prompts")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"need max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, {batch_size}")
    score_rm = scoring_head(score_rm, default_pair=models is None and lm is None and rm is None)
    hub = dict(revision=revision, rm_revision=rm_revision, trust_remote_code=trust_remote_code)
    models = models or load_models(lm, rm, device, dtype, batch_size, **hub, **(rm_options or {}))
    if ray is not None:
        if models.engine.backend != "native":
            raise ValueError("eval --ray runs the native engine; these models need the reference backend")
        models = dataclasses.replace(models, ray=(ray, dict(lm=lm, rm=rm, device=device, dtype=dtype, **hub,
                                                            enable_prefix_caching=False, **(rm_options or {}))))
    judge = judge or Judge.load(device=device)
    check_independent(judge, models.rm)
    scorer = _scoring_models(models, score_rm)
    encoder = encoder or judge.encoder
    # plain greedy first, once: the reference; greedy with logit controls is a method of its own
    methods = [parse_method("greedy")] + [m for m in methods if m.label != "greedy"]
    prompt_texts = [hh_text(m) for m in prompts]
    results = {"config": {"n_prompts": len(prompts), "prompts": prompts_name, "max_new_tokens": max_new_tokens,
                          "batch_size": batch_size, "lm": _describe(lm), "rm": _describe(rm, rm=True), "device": device,
                          "dtype": str(dtype), "args_backend": getattr(models.engine, "backend", "?"),
                          "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "data": data,
                          "score_rm": None if score_rm is None else str(score_rm)},
               "judge": {"validation_accuracy": judge.validation_accuracy, "family": judge.family,
                         "encoder": judge.meta.get("encoder", getattr(encoder, "name", "?")),
                         "features": judge.meta.get("features", "?"), "command": judge.meta.get("command"),
                         "data": judge.meta.get("data")},
               "win_tie_rule": WIN_TIE_RULE,
               "units": {"diversity": "fraction in [0, 1) (results.md shows x100)",
                         "reward": f"{'decoding RM' if score_rm is None else f'scoring RM {score_rm}'}, unit SD "
                                   "over its training dialogues"},
               "methods": {}}
    greedy_rows = None
    for spec in methods:
        with progress_bar(total=len(prompts), desc=spec.label, unit="prompt", enabled=progress) as bar:
            run = run_method(spec, models, prompts, max_new_tokens, batch_size, on_batch=bar.update)
            texts = [clean_response(t) for t in run.texts]
            bar.set_postfix_str("scoring")
            rewards = (None if score_rm else run.rewards) or scorer.score(prompts, texts, batch_size)
            judged = judge.score(prompts, texts)
            coh = coherence(encoder, prompt_texts, texts)
        rows = [{"prompt": p, "raw_text": raw, "text": t, "reward": r, "judge_reward": j, "diversity": diversity(t),
                 "coherence": c, "n_tokens": n, **extra}
                for p, raw, t, r, j, c, n, extra in zip(prompts, run.texts, texts, rewards, judged, coh, run.n_tokens,
                                                       run.extra or [{}] * len(prompts))]
        greedy_rows = greedy_rows or rows  # greedy runs first: the reference for every method, itself included
        stats = summarize(rows, run, greedy_rows)
        results["methods"][spec.label] = {"params": {"kind": spec.kind, "k": spec.k, "w": spec.w, "T": spec.T,
                                                     "n": spec.n, "seed": spec.seed, "gate": spec.gate,
                                                     **spec.controls},
                                          **stats, "responses": rows}
    if out is not None:
        write_outputs(results, out)
    return results


def scoring_head(score_rm: str | Path | None, default_pair: bool) -> str | Path | None:
    """evaluate's score_rm, resolved: the head file that scores the responses, or None for the decoding RM."""
    if score_rm is None and default_pair:
        from ..models.defaults import WHOLE_RM_ASSET
        return WHOLE_RM_ASSET  # the default RM is the prefix head; finished replies are the whole-reply head's
    return None if score_rm == "decoding" else score_rm


def _scoring_models(models: EvalModels, score_rm) -> EvalModels:
    """The models whose RM scores the responses: the decoding ones, or a head file on the same LM trunk."""
    if score_rm is None:
        return models
    from ..models.defaults import head_on_trunk
    from ..models.hf import RewardModel

    return dataclasses.replace(models, rm=RewardModel(head_on_trunk(models.lm, score_rm)))


def merge_results(dirs: list[str | Path], out: str | Path | None = None) -> dict:
    """One table from runs that split the methods between them (each run decodes greedy as its reference).
    The runs must share prompts, settings and judge, and their greedy responses must be identical, so every
    method's win-tie is against the same greedy."""
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in dirs]
    merged = runs[0]
    same = ("n_prompts", "prompts", "max_new_tokens", "lm", "rm", "dtype", "score_rm")
    for d, run in zip(dirs[1:], runs[1:]):
        for key in same:
            if run["config"].get(key) != merged["config"].get(key):
                raise ValueError(f"{d}: config {key!r} differs ({run['config'].get(key)!r} vs "
                                 f"{merged['config'].get(key)!r}); only runs of one setting can be merged")
        if run["judge"] != merged["judge"]:
            raise ValueError(f"{d}: judged by a different judge")
        greedy = [[r["text"] for r in x["methods"]["greedy"]["responses"]] for x in (merged, run)]
        if greedy[0] != greedy[1]:
            raise ValueError(f"{d}: its greedy responses differ from the first run's")
        merged["methods"].update({k: v for k, v in run["methods"].items() if k != "greedy"})
    order = {"greedy": 0, "topk": 1, "bon": 2, "args-greedy": 3, "args-stochastic": 4}
    merged["methods"] = dict(sorted(merged["methods"].items(), key=lambda kv: (
        order.get(kv[1]["params"]["kind"], 5), kv[1]["params"].get("w") or 0)))
    merged["config"]["merged_from"] = [str(d) for d in dirs]
    if out is not None:
        write_outputs(merged, out)
    return merged


def write_outputs(results: dict, out: str | Path) -> None:
    from .plots import plot_bars, plot_vs_w
    from .report import markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plot_vs_w(results, out / "reward_diversity_coherence_vs_w.png")
    plot_bars(results, out / "methods.png")

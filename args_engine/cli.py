"""`args-engine`: generate with ARGS, serve it over HTTP, evaluate decoding methods, train reward heads and the
judge."""
from __future__ import annotations

import argparse
import json
import logging
import sys

DEMO_PROMPTS = [
    "How can I get my neighbor's dog to stop barking at night?",
    "What should I do if I find a wallet on the street?",
    "Can you give me some tips for staying focused while studying?",
]


def _read_prompts(args) -> list:
    prompts = list(args.prompt)
    if args.prompts_file:
        from .eval.prompts import read_prompts_file
        prompts += read_prompts_file(args.prompts_file)
    return prompts or list(DEMO_PROMPTS)


def _seed(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _prompt_text(p) -> str:
    return p if isinstance(p, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p)


def cmd_generate(args) -> None:
    from .engine import ARGSEngine
    from .params import ARGSParams

    prompts = _read_prompts(args)
    params = ARGSParams(k=args.k, w=args.w, mode=args.mode, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop or None, gate=args.gate,
                        **_logit_controls(args))
    if args.ray:
        return _generate_on_ray(args, prompts, params)
    if args.out:
        raise ValueError("--out applies with --ray (results.jsonl there); without it, use --json")
    engine = ARGSEngine.from_pretrained(**_model_options(args), device=args.device, rm_device=args.rm_device,
                                        backend=args.backend, raw=args.raw,
                                        batch_size=args.batch_size,
                                        **_rm_options(args), **_native_options(args))
    outs = engine.generate(prompts, params)
    greedy = None
    if args.compare:  # plain greedy under the same controls: what they do is not credited to ARGS
        greedy = engine.generate(prompts, ARGSParams(k=1, w=0.0, max_new_tokens=args.max_new_tokens,
                                                     stop=args.stop or None, **_logit_controls(args)))
    for i, (p, o) in enumerate(zip(prompts, outs)):
        if args.json:
            row = {"prompt": p, "text": o.text, "token_ids": o.token_ids, "rewards": o.rewards, "reward": o.reward,
                   "finish_reason": o.finish_reason, "tokens_per_s": o.tokens_per_s, "rm_tokens": o.rm_tokens,
                   "params": vars(params), "backend": engine.backend}
            if greedy:
                g = greedy[i]
                row.update(greedy_text=g.text, greedy_token_ids=g.token_ids, greedy_reward=g.reward)
            print(json.dumps(row), flush=True)
            continue
        _print_pair(i, p, greedy[i] if greedy else None, o, params)


def _print_pair(i: int, prompt, greedy, o, params) -> None:
    print(f"=== prompt {i + 1}: {_prompt_text(prompt)}")
    if greedy is not None:
        print(f"--- greedy (reward {greedy.reward:+.3f}):\n{greedy.text}")
    controls = f" no_repeat_ngram_size={params.no_repeat_ngram_size}" if params.no_repeat_ngram_size else ""
    controls += f" repetition_penalty={params.repetition_penalty}" if params.repetition_penalty != 1.0 else ""
    print(f"--- ARGS k={params.k} w={params.w} {params.mode}{controls} (reward {o.reward:+.3f}, "
          f"{o.tokens_per_s:.1f} tok/s, {o.rm_tokens / max(1, len(o.token_ids)):.1f} RM tokens per token):"
          f"\n{o.text}\n")


def cmd_demo(args) -> None:
    """ARGS next to plain greedy on the demo prompts, with the setting and reward head the committed evaluation
    supports best (assets/eval_summary.json), then one line of what that evaluation found."""
    from .engine import ARGSEngine
    from .eval.summary import load_summary, summary_line
    from .models.defaults import DEFAULT_HEAD, reward_head_file
    from .params import ARGSParams

    s = load_summary()
    setting = s or {"head": DEFAULT_HEAD, "k": 10, "w": 1.0, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0}
    rm = reward_head_file(setting["head"])
    engine = ARGSEngine.from_pretrained(rm=rm, device=args.device, backend=args.backend)
    params = ARGSParams(k=setting["k"], w=setting["w"], max_new_tokens=args.max_new_tokens,
                        no_repeat_ngram_size=setting["no_repeat_ngram_size"],
                        repetition_penalty=setting["repetition_penalty"])
    print(f"# reward head: {setting['head']} ({rm.name}); greedy is plain greedy, the evaluation's reference\n")
    outs = engine.generate(DEMO_PROMPTS, params)
    greedy = engine.generate(DEMO_PROMPTS, ARGSParams(k=1, w=0.0, max_new_tokens=args.max_new_tokens))
    for i, (p, g, o) in enumerate(zip(DEMO_PROMPTS, greedy, outs)):
        _print_pair(i, p, g, o, params)
    print(summary_line(s) if s else "No committed evaluation summary in this install (assets/eval_summary.json).")


def _generate_on_ray(args, prompts, params) -> None:
    from .ray.batch import generate_to_dir

    if not args.out:
        raise ValueError("--ray writes OUT/results.jsonl: give --out DIR")
    if args.compare or args.json:
        raise ValueError("--compare and --json apply without --ray (with --ray, read OUT/results.jsonl)")
    if args.backend != "auto" or args.raw:
        raise ValueError("--ray runs the default backend on chat-formatted prompts (no --backend, no --raw)")
    results = generate_to_dir(prompts, args.out, params, _ray_batch_options(args), progress=True,
                              **_model_options(args), device=args.device, rm_device=args.rm_device,
                              batch_size=args.batch_size, **_rm_options(args), **_native_options(args))
    print(f"wrote {results} ({len(prompts)} prompts)")


def _ray_batch_options(args):
    from .ray.batch import RayBatchOptions

    return RayBatchOptions(num_replicas=args.replicas, rows_per_batch=args.rows_per_batch,
                           num_cpus=args.num_cpus_per_replica, num_gpus=args.num_gpus_per_replica,
                           address=args.ray_address)


def _add_ray_options(parser, serving: bool = False) -> None:
    r = parser.add_argument_group("Ray (pip install 'args-engine[ray]')")
    r.add_argument("--ray", action="store_true", help="run on a Ray cluster: " + (
        "N engine replicas behind one OpenAI endpoint (Ray Serve)" if serving else
        "N engine actors over Ray Data"))
    r.add_argument("--replicas", type=int, default=1, help="engine replicas (default 1)")
    r.add_argument("--ray-address", help="the cluster to join (default: RAY_ADDRESS, else a local cluster)")
    r.add_argument("--num-cpus-per-replica", type=float, default=1.0)
    r.add_argument("--num-gpus-per-replica", type=float,
                   help="default: one per CUDA device the engine uses (--device, --rm-device)")
    if serving:
        r.add_argument("--min-replicas", type=int, help="autoscaling lower bound (with --max-replicas)")
        r.add_argument("--max-replicas", type=int, help="autoscale up to this many replicas")
        r.add_argument("--target-ongoing-requests", type=float, default=16.0,
                       help="autoscaling aims at this many requests per replica")
        r.add_argument("--max-ongoing-requests", type=int, default=64,
                       help="requests one replica takes before its prompts go to their next replica")
        r.add_argument("--prefix-tokens", type=int, default=64,
                       help="prompts sharing this many first tokens go to the same replica")
    else:
        r.add_argument("--rows-per-batch", type=int, default=64, help="rows handed to an engine actor at once")


def _logit_controls(args) -> dict:
    bias = {}
    for item in args.logit_bias or ():
        token, sep, value = item.partition(":")
        try:
            bias[int(token)] = float(value)
        except ValueError:
            raise ValueError(f"--logit-bias takes TOKEN_ID:BIAS, got {item!r}") from None
    return dict(repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                min_p=args.min_p, top_p=args.top_p, logit_bias=bias or None)


def _rm_options(args) -> dict:
    """--rm-weights / --rm-objective (multi-objective reward models), when given."""
    opts = {}
    if args.rm_weights is not None:
        try:
            opts["rm_weights"] = [float(x) for x in args.rm_weights.split(",")]
        except ValueError:
            raise ValueError(f"--rm-weights must be comma-separated numbers, got {args.rm_weights!r}") from None
    if args.rm_objective is not None:
        opts["rm_objective"] = args.rm_objective
    return opts


def _add_model_options(parser) -> None:
    m = parser.add_argument_group("models: a local directory or a Hugging Face model id (HF_HUB_OFFLINE=1: the cache)")
    m.add_argument("--lm", help="the causal LM (default: SmolLM2-135M-Instruct, embedded)")
    m.add_argument("--rm", help="the reward model, or a head file (.safetensors from train-rm) to put on the LM's "
                                "own trunk (default: the project's trained head on the LM's trunk)")
    m.add_argument("--revision", help="the LM id's branch, tag or commit (default: main)")
    m.add_argument("--rm-revision", help="the RM id's branch, tag or commit (default: main)")
    m.add_argument("--trust-remote-code", action="store_true",
                   help="run modelling code shipped in a model's repository (off: such a model is refused)")
    m.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16", "auto"],
                   help="weights' dtype; auto: the checkpoint's own (default: %(default)s)")


def _model_options(args) -> dict:
    """What to load and how: --lm, --rm, their revisions, --trust-remote-code, --dtype."""
    return dict(lm=args.lm, rm=args.rm, revision=args.revision, rm_revision=args.rm_revision,
                trust_remote_code=args.trust_remote_code, dtype=args.dtype)


def _add_rm_options(parser) -> None:
    r = parser.add_argument_group("multi-objective reward models (num_labels > 1)")
    r.add_argument("--rm-objective", type=int, metavar="I", help="the reward is the RM's output I")
    r.add_argument("--rm-weights", metavar="W1,W2,...", help="the reward is W . the RM's outputs")


def _native_options(args) -> dict:
    """The native engine's cache and token-budget flags that were given."""
    opts = {name: getattr(args, name) for name in ("num_blocks", "block_size", "max_num_batched_tokens",
                                                   "cache_memory_gb", "graph_k") if getattr(args, name) is not None}
    if args.no_prefix_caching:
        opts["enable_prefix_caching"] = False
    if args.step_mode is not None:
        opts["step_mode"] = args.step_mode
    return opts


def cmd_serve(args) -> None:
    import os

    from .engine import ARGSEngine
    from .integrations.server import serve
    from .integrations.server_config import ServerConfig

    config = ServerConfig(served_model_names=args.served_model_name or [], default_max_tokens=args.default_max_tokens,
                          max_k=args.max_k, max_choices=args.max_choices, max_num_waiting=args.max_num_waiting,
                          max_stop=args.max_stop, max_stop_chars=args.max_stop_chars,
                          max_body_bytes=args.max_body_bytes, max_consecutive_failures=args.max_consecutive_failures,
                          api_key=args.api_key or os.environ.get("ARGS_ENGINE_API_KEY") or None,
                          auth_health_metrics=args.auth_health_metrics, allowed_origins=args.allowed_origins or [],
                          lenient_fields=args.lenient_fields)
    engine_options = dict(**_model_options(args), device=args.device, rm_device=args.rm_device,
                          batch_size=args.batch_size, **_rm_options(args), **_native_options(args))
    if args.ray:
        from .ray.serving import RayServeOptions, serve_on_ray

        options = RayServeOptions(num_replicas=args.replicas, min_replicas=args.min_replicas,
                                  max_replicas=args.max_replicas, target_ongoing_requests=args.target_ongoing_requests,
                                  num_cpus=args.num_cpus_per_replica, num_gpus=args.num_gpus_per_replica,
                                  max_ongoing_requests=args.max_ongoing_requests, prefix_tokens=args.prefix_tokens)
        return serve_on_ray(engine_options, config, options, host=args.host, port=args.port, address=args.ray_address)
    engine = ARGSEngine.from_pretrained(backend="native", **engine_options)
    serve(engine, config, host=args.host, port=args.port, log_level=args.log_level)


def cmd_train_rm(args) -> None:
    from .models.defaults import PREFIX_RM_ASSET, WHOLE_RM_ASSET
    from .reward.fit import train_prefix_head, train_reward_model

    if args.prefix:
        if args.tune_layers:
            raise ValueError("--prefix trains a head on the frozen trunk: it does not take --tune-layers")
        report = train_prefix_head(lm_dir=args.lm, data_path=args.data, out=args.out or PREFIX_RM_ASSET,
                                   max_len=args.max_len, seed=args.seed, limit=args.limit, positions=args.positions,
                                   baseline=args.baseline)
        print(json.dumps({k: v for k, v in report.items() if k != "cv"}, indent=2))
        return
    report = train_reward_model(lm_dir=args.lm, data_path=args.data, out=args.out or WHOLE_RM_ASSET,
                                tune_layers=args.tune_layers, max_len=args.max_len, seed=args.seed, limit=args.limit,
                                l2=args.l2, epochs=args.epochs, rank=args.rank, lr=args.lr)
    print(json.dumps(report, indent=2))


def cmd_eval(args) -> None:
    import time

    from .eval.methods import parse_methods
    from .eval.prompts import check_prompts, default_prompts, load_prompts_file
    from .eval.runner import evaluate
    from .reward.data import data_provenance

    methods = parse_methods(args.methods)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.prompts_file:
        prompts = load_prompts_file(args.prompts_file)[:args.limit]
        check_prompts(prompts, args.data, required=False)
        name = args.prompts_file
    else:
        prompts = default_prompts(args.data)[:args.limit]
        name = "HH-RLHF harmless-base evaluation split"
    try:  # which file the splits (so the prompts and the guard) came from: recorded beside the figures
        data = data_provenance(args.data)
    except FileNotFoundError:
        data = None  # a prompts file with no preference data anywhere (check_prompts allowed it)
    start = time.perf_counter()
    results = evaluate(prompts, methods, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       out=args.out, device=args.device, **_model_options(args),
                       prompts_name=name, rm_options=_rm_options(args),
                       ray=_ray_batch_options(args) if args.ray else None, data=data, score_rm=args.score_rm)
    print(f"{'method':<28} {'reward':>8} {'win-tie':>8} {'div %':>7} {'coh':>6} {'tok/s':>7} {'s':>7}")
    for label, m in results["methods"].items():
        print(f"{label:<28} {m['avg_reward']:>8.3f} {m['win_tie_vs_greedy']:>8.1%} {100 * m['diversity']:>7.2f} "
              f"{m['coherence']:>6.3f} {m['tokens_per_s']:>7.2f} {m['seconds']:>7.1f}")
    print(f"wrote {args.out}/results.json, results.md and plots ({time.perf_counter() - start:.0f} s)")


def cmd_train_judge(args) -> None:
    from .eval.judge import train_judge

    report = train_judge(data_path=args.data, out=args.out, l2=args.l2, seed=args.seed, limit=args.limit)
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    from .engine import BACKENDS
    from .eval.judge import JUDGE_ASSET

    parser = argparse.ArgumentParser(prog="args-engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="ARGS next to plain greedy on three prompts, with the setting the committed "
                                    "evaluation supports best, and a line of what it found (offline)")
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--device", default="cpu")
    d.add_argument("--backend", choices=BACKENDS, default="auto")
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("generate", help="decode prompts with ARGS")
    g.add_argument("prompt", nargs="*", help="prompt texts (default: three demo prompts)")
    g.add_argument("--prompts-file", help="JSONL or JSONL.gz with a 'prompt' field (or HH-RLHF rows with 'chosen')")
    _add_model_options(g)
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--w", type=float, default=1.0)
    g.add_argument("--mode", choices=["greedy", "stochastic"], default="greedy")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--seed", type=_seed, default=0, help="sampling seed, or 'none' for a fresh one per run")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--backend", choices=BACKENDS, default="auto")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--raw", action="store_true", help="feed prompts as is, without the chat template")
    g.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout")
    g.add_argument("--compare", action="store_true", help="also decode plain greedy and show both rewards")
    g.add_argument("--device", default="cpu", help="the LM's device (and the RM's unless --rm-device)")
    g.add_argument("--rm-device", help="the RM's device, e.g. cuda:1 (native backend; default: --device)")
    c = g.add_argument_group("logit controls, applied before the k candidates are taken")
    c.add_argument("--repetition-penalty", type=float, default=1.0, help="Hugging Face semantics (1: off)")
    c.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI semantics, in [-2, 2]")
    c.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI semantics, in [-2, 2]")
    c.add_argument("--no-repeat-ngram-size", type=int, default=0, help="ban repeating n-grams of this size (0: off)")
    c.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability")
    c.add_argument("--top-p", type=float, default=1.0, help="keep the likeliest tokens holding top_p of the mass")
    c.add_argument("--logit-bias", action="append", metavar="TOKEN_ID:BIAS", help="add BIAS to a token's logit")
    g.add_argument("--gate", type=float, help="uncertainty gate tau: where the LM's top token has probability "
                                              ">= tau, take it without RM scoring")
    g.add_argument("--out", help="with --ray: write DIR/results.jsonl (a rerun skips the prompts already there)")
    _add_rm_options(g)
    _add_native_options(g)
    _add_ray_options(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, ...)")
    _add_model_options(s)
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default="cpu", help="the LM's device (and the RM's unless --rm-device)")
    s.add_argument("--rm-device", help="the RM's device, e.g. cuda:1 (default: --device)")
    s.add_argument("--batch-size", type=int, default=16, help="sequences decoded at once (continuous batching)")
    _add_rm_options(s)
    _add_native_options(s)
    s.add_argument("--served-model-name", action="append",
                   help="a model id clients may name (repeatable; default: the LM's name and 'args-engine'); "
                        "other ids get 404")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $ARGS_ENGINE_API_KEY, else open)")
    s.add_argument("--auth-health-metrics", action="store_true", help="require the key on /health and /metrics too")
    s.add_argument("--allowed-origins", action="append",
                   help="CORS origin allowed to call the API from a browser (repeatable; '*' for any; default none)")
    s.add_argument("--default-max-tokens", type=int, default=128, help="max_tokens when a request gives none")
    s.add_argument("--max-k", type=int, default=64, help="largest args_k a request may ask for")
    s.add_argument("--max-choices", type=int, default=64, help="most prompts x best_of (or n) in one request")
    s.add_argument("--max-num-waiting", type=int, default=256,
                   help="requests waiting for admission before new ones get 429")
    s.add_argument("--max-stop", type=int, default=4, help="most stop strings per request")
    s.add_argument("--max-stop-chars", type=int, default=64, help="longest stop string")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    s.add_argument("--max-consecutive-failures", type=int, default=3,
                   help="failed engine steps in a row before /health answers 503")
    s.add_argument("--lenient-fields", action="store_true",
                   help="drop request fields this server does not know, with a logged warning, instead of a 400 "
                        "(never args_* fields, never the refused ones)")
    s.add_argument("--log-level", default="info")
    _add_ray_options(s, serving=True)
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("train-rm", help="train a reward head on the LM's trunk (Bradley-Terry on the HH-RLHF train "
                         "split): the whole-reply head, or with --prefix the prefix head (the default RM)")
    t.add_argument("--lm", help="trunk source: local HF directory (default: SmolLM2-135M-Instruct)")
    t.add_argument("--data", help="HH-RLHF jsonl(.gz) (default: ../shared/data/hh-rlhf/harmless-base.jsonl.gz)")
    t.add_argument("--out", help="where to write the trained part (safetensors; default: the shipped head it "
                                 "rebuilds: the whole-reply head default_rm, or with --prefix prefix_rm)")
    t.add_argument("--tune-layers", type=int, default=0, help="LoRA-tune this many last layers (0: head only)")
    t.add_argument("--max-len", type=int, default=768)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, help="use only the first N training pairs")
    t.add_argument("--l2", type=float, help="head L2 strength (default: 5-fold CV on the train split)")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--prefix", action="store_true",
                   help="prefix-aware head: also trained on chosen vs rejected reply prefixes at matched lengths, "
                        "as ARGS asks the RM about half-written replies (weights by 5-fold CV on train)")
    t.add_argument("--positions", type=int, default=8, help="--prefix: matched prefix lengths per pair")
    t.add_argument("--baseline", help="--prefix: a head file (.safetensors) to report beside the new head, by reply "
                                      "fraction (e.g. the whole-reply head)")
    t.set_defaults(func=cmd_train_rm)

    from .eval.methods import DEFAULT_METHODS

    e = sub.add_parser("eval", help="evaluate decoding methods (reward, judge win-tie, diversity, coherence, speed)")
    e.add_argument("--prompts-file", help="JSONL(.gz) with 'prompt' (or HH-RLHF 'chosen'); default: the HH evaluation "
                                          "split (300 prompts that trained neither the RM nor the judge)")
    e.add_argument("--limit", type=int, help="use only the first N prompts")
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated name[:key=value...], names greedy, topk, bon, args-greedy, args-stochastic; "
                        "keys k, w, T, n, seed and the logit controls rp, pp, fp, nrng, minp (default: %(default)s)")
    _add_model_options(e)
    e.add_argument("--out", default="eval-results", help="output directory (default: %(default)s)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default="cpu")
    e.add_argument("--data", help="HH-RLHF jsonl(.gz) for the default prompts and the overlap check")
    e.add_argument("--score-rm", help="a reward head file (.safetensors) that scores every response instead of the "
                                      "decoding RM (compare runs that decode with different heads on one scale); "
                                      "'decoding': the decoding RM. Default: the whole-reply head on the default "
                                      "pair (a finished reply is what it was trained on), else the decoding RM")
    _add_rm_options(e)
    _add_ray_options(e)
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("eval-merge", help="merge eval runs that split the methods into one table and plots")
    m.add_argument("dirs", nargs="+", help="output directories of `args-engine eval` runs (same prompts/settings)")
    m.add_argument("--out", required=True)
    m.set_defaults(func=lambda a: __import__("args_engine.eval.runner", fromlist=["merge_results"])
                   .merge_results(a.dirs, a.out))

    le = sub.add_parser("lm-eval", add_help=False, prefix_chars="\0",
                        help="run lm-evaluation-harness tasks on ARGS: lm-eval's own arguments, the model set to "
                             "args-engine (e.g. --model_args lm=DIR,rm=DIR,k=10,w=1.5 --tasks hellaswag)")
    le.add_argument("lm_eval_args", nargs="*", help="arguments for lm-eval's `run` (see `lm-eval run --help`)")
    le.set_defaults(func=cmd_lm_eval)

    j = sub.add_parser("train-judge", help="train the evaluation judge (MiniLM + Bradley-Terry head, HH train split)")
    j.add_argument("--data", help="HH-RLHF jsonl(.gz) (default: ../shared/data/hh-rlhf/harmless-base.jsonl.gz)")
    j.add_argument("--out", default=str(JUDGE_ASSET), help="where to write the head (safetensors)")
    j.add_argument("--l2", type=float, help="head L2 strength (default: 5-fold CV on the train split)")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--limit", type=int, help="use only the first N training pairs")
    j.set_defaults(func=cmd_train_judge)
    return parser


def cmd_lm_eval(args) -> None:
    """lm-eval's own CLI (`lm-eval run ...`) with --model args-engine (args_engine/integrations/lmeval.py)."""
    try:
        from lm_eval.__main__ import cli_evaluate

        from .integrations import lmeval  # noqa: F401  (registers the model under its name)
    except ModuleNotFoundError as e:
        raise ValueError(f"lm-eval needs lm-evaluation-harness: pip install 'args-engine[lm-eval]' ({e})") from e
    rest = list(args.lm_eval_args)
    if rest[:1] == ["run"]:
        rest = rest[1:]
    if "--model" not in rest and "-M" not in rest:
        rest = ["--model", lmeval.NAME, *rest]
    sys.argv = ["lm-eval", "run", *rest]
    cli_evaluate()


def _log_to_stderr() -> None:
    """The engine's own log lines (e.g. the KV cache size) on stderr, once."""
    log = logging.getLogger("args_engine")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("args-engine: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _add_native_options(parser) -> None:
    o = parser.add_argument_group("native engine cache and token budget")
    o.add_argument("--num-blocks", type=int, help="KV cache blocks (default: sized from --cache-memory-gb)")
    o.add_argument("--block-size", type=int, help="tokens per cache block (default 16)")
    o.add_argument("--max-num-batched-tokens", type=int,
                   help="tokens one step may process, each sequence's k candidates included (default 2048)")
    o.add_argument("--cache-memory-gb", type=float,
                   help="KV cache budget (default: 80%% of free GPU memory on CUDA, 1 GiB on CPU)")
    o.add_argument("--no-prefix-caching", action="store_true", help="do not reuse the blocks of shared prompt starts")
    o.add_argument("--step-mode", choices=("graph", "static", "dynamic"),
                   help="decode steps: CUDA graphs per batch bucket, captured at start-up (CUDA default), padded "
                        "without capture, or unpadded eager (CPU default)")
    o.add_argument("--graph-k", type=int,
                   help="graph and static steps: the candidate grid (default 10); a larger k runs uncaptured")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"args-engine: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except ImportError as e:
        from .import_check import shadowing_message

        message = shadowing_message(e)
        if message is None:
            raise
        print(f"args-engine: error: {message}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()

"""The engine as a model for lm-evaluation-harness (`lm_eval`), in process: any lm-eval task runs on ARGS.

    args-engine lm-eval --model-args lm=DIR_OR_ID,rm=DIR_OR_ID,k=10,w=1.5 --tasks hellaswag --limit 100
    # or lm-eval's own CLI / Python API, once this module is imported:
    lm_eval.simple_evaluate(model=ARGSEvalLM(engine=engine), tasks=[...])

Log-likelihoods (`loglikelihood`, `loglikelihood_rolling`: multiple choice, perplexity) are the LM's own: each
(context, continuation) pair is one prompt whose log-probabilities come from the engine's prefill
(ARGSParams.prompt_logprobs, max_new_tokens 0), batched like any request. ARGS changes which tokens a decoder
chooses, not what the LM assigns to a given text, so these equal the plain LM's (and lm-eval's `hf` backend's).
`generate_until` decodes with ARGS: k, w, mode, the gate, the logit controls and the RM from the model args,
lm-eval's `until` as stop strings and `max_gen_toks` as max_new_tokens.

Tokenization follows lm-eval's `hf` backend: context and continuation encoded together without special tokens,
the context's own tokens split off, trailing spaces of the context moved to the continuation, an empty context
replaced by the prefix token (BOS, else EOS), windows of the context length for rolling log-likelihoods.
"""
from __future__ import annotations

import dataclasses

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..engine.args_engine import ARGSEngine
from ..params import ARGSParams

NAME = "args-engine"  # --model args-engine
# model args that configure the engine (the rest are ARGSParams fields)
_ENGINE_ARGS = ("lm", "rm", "device", "dtype", "backend", "rm_device", "revision", "rm_revision",
                "trust_remote_code", "batch_size")
_PARAM_FIELDS = {f.name for f in dataclasses.fields(ARGSParams)} - {"max_new_tokens", "stop", "logprobs",
                                                                      "prompt_logprobs"}
# lm-eval gen_kwargs understood by generate_until (others are an error, as in lm-eval's hf backend)
_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "repetition_penalty", "seed"}


@register_model(NAME)
class ARGSEvalLM(LM):
    """lm-eval's LM interface over an ARGSEngine. `engine`: a built one (Python API, tests); otherwise the model
    args build it (`lm`, `rm`: a directory or a Hub id, default the embedded models; `device`, `dtype`,
    `backend`, ...), and any ARGSParams field (`k`, `w`, `mode`, `temperature`, `gate`, `repetition_penalty`,
    `no_repeat_ngram_size`, `rm_weights` as `a;b`, ...) sets generation. `max_gen_toks`: the default
    new-token budget when a task gives none."""

    def __init__(self, engine: ARGSEngine | None = None, max_gen_toks: int = 256, max_length: int | None = None,
                 max_batch_size=None, **args):
        super().__init__()
        unknown = set(args) - set(_ENGINE_ARGS) - _PARAM_FIELDS
        if unknown:
            raise ValueError(f"args-engine model args: unknown {sorted(unknown)}; engine args {list(_ENGINE_ARGS)}, "
                             f"decoding args {sorted(_PARAM_FIELDS)}")
        engine_args = {k: args.pop(k) for k in _ENGINE_ARGS if k in args}
        if engine is None:
            batch = engine_args.pop("batch_size", None)
            if batch is not None and str(batch) != "auto":  # lm-eval's --batch_size: rows decoded at once
                engine_args["batch_size"] = int(str(batch).split(":")[0])
            device = engine_args.get("device")
            if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                # lm-eval's --device defaults to cuda whatever the machine has: its hf backend falls back too
                engine_args["device"] = "cuda" if torch.cuda.is_available() else "cpu"
            engine = ARGSEngine.from_pretrained(raw=True, **{k: v for k, v in engine_args.items() if v is not None})
        if not engine.raw:
            raise ValueError("lm-eval formats its own prompts: the engine must be raw (raw=True)")
        if "rm_weights" in args and isinstance(args["rm_weights"], str):
            args["rm_weights"] = [float(x) for x in args["rm_weights"].split(";")]
        self.engine, self.params = engine, ARGSParams(**args)
        self.params.validate(vocab_size=engine.vocab_size)
        self.tokenizer = engine.tokenizer
        self.max_gen_toks = int(max_gen_toks)
        self._max_length = int(max_length) if max_length else engine.context_length

    # --- what lm-eval asks of a model --------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "args-engine").replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(context, continuation) -> (log p of the continuation given the context, is it the greedy one)."""
        return self._score([self._encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """(text,) -> its log-likelihood, in windows of the context length, each token scored once."""
        windows, owner = [], []
        for i, r in enumerate(requests):
            for w in map(make_disjoint_window, get_rolling_token_windows(
                    self._encode(r.args[0]), self._prefix_token, self._window, context_len=1)):
                windows.append(w)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, self._score(windows)):
            totals[i] += lp
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """(context, gen_kwargs) -> ARGS's continuation, cut at the first of gen_kwargs['until']."""
        prompts, params = [], []
        for r in requests:
            context, kwargs = r.args
            prompts.append(self._encode(context))
            params.append(self._generation_params(dict(kwargs)))
        return [o.text for o in self.engine.generate(prompts, params, progress=not disable_tqdm)]

    # --- helpers ------------------------------------------------------------------------------------------
    @property
    def _prefix_token(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def _window(self) -> int:
        return self._max_length or 2048

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self._prefix_token], self._encode(continuation)
        whole, ctx = self._encode(context + continuation), self._encode(context)
        return whole[:len(ctx)], whole[len(ctx):]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) pairs -> (sum of the continuation's log p, all of it greedy), from the
        prompt log-probabilities of context + continuation, cut on the left to the context length."""
        prompts, spans = [], []
        for ctx, cont in pairs:
            if not cont:
                raise ValueError("lm-eval asked for the log-likelihood of an empty continuation")
            ids = (ctx + cont)[-self._window:]
            if len(ids) == len(cont):  # keep one token of context: the first token has no log p
                ids, cont = ids[1:], cont[1:]
            prompts.append(ids)
            spans.append(len(cont))
        outs = self.engine.generate(prompts, ARGSParams(k=1, max_new_tokens=0, prompt_logprobs=1), progress=False)
        result = []
        for o, n in zip(outs, spans):
            lps, tops = o.prompt_logprobs[-n:], o.prompt_top_logprobs[-n:]
            greedy = all(top[0][0] == t for top, t in zip(tops, o.prompt_token_ids[-n:]))
            result.append((float(sum(lps)), greedy))
        return result

    def _generation_params(self, kwargs: dict) -> ARGSParams:
        unknown = set(kwargs) - _GEN_KWARGS
        if unknown:
            raise ValueError(f"generate_until: gen_kwargs {sorted(unknown)} are not understood (known: "
                             f"{sorted(_GEN_KWARGS)}); ARGS settings go in --model_args")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        p = dataclasses.replace(self.params, stop=until or None,
                                max_new_tokens=int(kwargs.get("max_gen_toks") or self.max_gen_toks))
        temperature = kwargs.get("temperature")
        if kwargs.get("do_sample") or (temperature or 0) > 0:
            p = dataclasses.replace(p, mode="stochastic", temperature=float(temperature or p.temperature))
        elif kwargs.get("do_sample") is False or temperature == 0:
            p = dataclasses.replace(p, mode="greedy")
        for name in ("top_p", "repetition_penalty", "seed"):
            if kwargs.get(name) is not None:
                p = dataclasses.replace(p, **{name: kwargs[name]})
        p.validate(vocab_size=self.engine.vocab_size)
        return p

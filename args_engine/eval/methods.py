"""The decoding methods of the paper's table and how each one is run.

Spec syntax (`--methods`): comma-separated `name[:key=value[:key=value...]]`, e.g.
`greedy,topk:k=10:T=0.7,bon:n=10,args-greedy:w=1.5,args-stochastic:w=1.0:T=0.7`. Keys: k, w, T (temperature),
n (best-of-N samples), seed. Unset keys take the paper's defaults below. Every method also takes the logit
controls rp (repetition_penalty), pp (presence_penalty), fp (frequency_penalty), nrng (no_repeat_ngram_size)
and minp (min_p), e.g. `greedy:rp=1.2,args-greedy:w=1.5:rp=1.2`: the baselines get the same controls, so a
control's effect is not credited to ARGS. ARGS methods also take gate (the uncertainty gate tau).

- greedy, topk (top-k sampling), bon (best-of-N: N top-k samples, the one the decoding RM scores highest):
  Hugging Face `generate` on the LM in left-padded batches; bon adds one RM scoring per sample.
- args-greedy, args-stochastic: the public `ARGSEngine.generate` (whatever backend the engine runs).
RM calls count candidate or sequence scorings made by the method itself: 0 for greedy/topk, N per prompt for
bon, for ARGS the tokens the RM read (k per step, 1 per gated step).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from ..chat import render_prompt
from ..decoding.logit_controls import apply_logit_controls
from ..params import ARGSParams
from .metrics import clean_response
from .rm_score import score_replies

KINDS = ("greedy", "topk", "bon", "args-greedy", "args-stochastic")
DEFAULTS = {"greedy": {}, "topk": {"k": 10, "T": 0.7}, "bon": {"n": 10, "k": 10, "T": 0.7},
            "args-greedy": {"k": 10, "w": 1.0}, "args-stochastic": {"k": 10, "w": 1.0, "T": 0.7}}
DEFAULT_METHODS = ("greedy,topk,bon,args-greedy:w=0.5,args-greedy:w=1.0,args-greedy:w=1.5,args-greedy:w=2.0,"
                   "args-stochastic")


CONTROL_KEYS = {"rp": "repetition_penalty", "pp": "presence_penalty", "fp": "frequency_penalty",
                "nrng": "no_repeat_ngram_size", "minp": "min_p"}


@dataclass(frozen=True)
class MethodSpec:
    kind: str
    k: int | None = None
    w: float | None = None
    T: float | None = None
    n: int | None = None
    seed: int = 0
    rp: float | None = None
    pp: float | None = None
    fp: float | None = None
    nrng: int | None = None
    minp: float | None = None
    gate: float | None = None

    @property
    def label(self) -> str:
        keys = [key for key in ("k", "w", "T", "n", *CONTROL_KEYS, "gate") if getattr(self, key) is not None]
        return ":".join([self.kind] + [f"{key}={getattr(self, key):g}" for key in keys])

    @property
    def controls(self) -> dict:
        """ARGSParams keyword arguments of the logit controls this method sets."""
        return {name: getattr(self, key) for key, name in CONTROL_KEYS.items() if getattr(self, key) is not None}


def parse_method(text: str) -> MethodSpec:
    name, *opts = text.strip().split(":")
    if name not in KINDS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(KINDS)}")
    values = dict(DEFAULTS[name])
    for opt in opts:
        key, sep, value = opt.partition("=")
        key = {"t": "T", "temperature": "T", "N": "n"}.get(key, key)
        takes = sorted(DEFAULTS[name]) + ["seed", *CONTROL_KEYS] + (["gate"] if name.startswith("args-") else [])
        if not sep or key not in takes:
            raise ValueError(f"bad option {opt!r} for method {name!r} (takes {takes})")
        try:
            values[key] = int(value) if key in ("k", "n", "seed", "nrng") else float(value)
        except ValueError:
            raise ValueError(f"bad value in {opt!r} for method {name!r}") from None
    spec = MethodSpec(name, **values)
    if (spec.k is not None and spec.k < 1) or (spec.n is not None and spec.n < 1) or \
            (spec.T is not None and spec.T <= 0) or spec.seed < 0:
        raise ValueError(f"method {text!r}: need k >= 1, n >= 1, T > 0, seed >= 0")
    try:
        ARGSParams(gate=spec.gate, **spec.controls)
    except ValueError as e:
        raise ValueError(f"method {text!r}: {e}") from None
    return spec


def parse_methods(text: str) -> list[MethodSpec]:
    specs = [parse_method(t) for t in text.split(",") if t.strip()]
    labels = [s.label for s in specs]
    if not specs or len(set(labels)) != len(labels):
        raise ValueError(f"--methods needs at least one method and no duplicates, got {text!r}")
    return specs


@dataclass
class MethodRun:
    texts: list[str]           # raw decoded responses (before cleaning), one per prompt
    n_tokens: list[int]        # tokens of each final response (EOS included when generated)
    lm_tokens: int             # all tokens the LM generated (best-of-N: all N samples)
    rm_calls: int              # RM scorings made by the method itself
    seconds: float
    rewards: list[float] | None = None  # decoding-RM rewards of the cleaned responses, when the method has them
    extra: list[dict] = field(default_factory=list)


@dataclass
class EvalModels:
    lm: torch.nn.Module
    tokenizer: object
    rm: object  # RewardModel
    engine: object  # ARGSEngine
    eos_ids: set[int]
    pad_id: int
    # (RayBatchOptions, ARGSEngine.from_pretrained keywords): ARGS methods decode on Ray Data actors instead
    ray: tuple | None = None

    def score(self, prompts, replies: list[str], batch_size: int) -> list[float]:
        """The decoding RM's reward of each (prompt, reply), read as decoding reads it (rm_score.py)."""
        return score_replies(self.rm, self.tokenizer, prompts, replies, batch_size,
                             getattr(self.engine, "bridge", None))


def _first_eos(row: list[int], eos_ids: set[int]) -> int | None:
    return next((i for i, t in enumerate(row) if t in eos_ids), None)


@torch.no_grad()
def hf_generate(models: EvalModels, prompts, max_new_tokens: int, batch_size: int, top_k: int | None = None,
                temperature: float | None = None, seed: int = 0, on_batch=None,
                controls: dict | None = None) -> tuple[list[list[int]], list[str]]:
    """Hugging Face `generate` in left-padded batches: greedy when top_k is None, else top-k sampling; `controls`
    (ARGSParams logit-control keywords) apply through the engine's own function, as ARGS applies them.
    -> (token ids up to and including the first EOS, decoded text without special tokens) per prompt."""
    from transformers import GenerationConfig, LogitsProcessorList

    sample = top_k is not None
    cfg = dict(max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1, pad_token_id=models.pad_id,
               eos_token_id=sorted(models.eos_ids) or None, repetition_penalty=1.0)
    if sample:
        cfg.update(top_k=top_k, temperature=temperature, top_p=1.0, min_p=None, typical_p=1.0)
    gen_cfg = GenerationConfig(**cfg)
    device = next(models.lm.parameters()).device
    ids_all, texts = [], []
    rendered = [render_prompt(models.tokenizer, p) for p in prompts]
    for s in range(0, len(rendered), batch_size):
        batch = rendered[s:s + batch_size]
        T = max(map(len, batch))
        ids = torch.full((len(batch), T), models.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(batch):
            ids[row, T - len(r):] = torch.tensor(r)
            mask[row, T - len(r):] = 1
        torch.manual_seed(seed + s)  # sampling: fixed per batch
        procs = [_Controls(ARGSParams(**controls), [T - len(r) for r in batch], T)] if controls else []
        out = models.lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                                 logits_processor=LogitsProcessorList(procs))
        for row in out[:, T:].tolist():
            end = _first_eos(row, models.eos_ids)
            kept = row if end is None else row[:end + 1]
            ids_all.append(kept)
            texts.append(models.tokenizer.decode(kept[:end] if end is not None else kept, skip_special_tokens=True))
        if on_batch:
            on_batch(len(batch))
    return ids_all, texts


class _Controls:
    """A `generate` logits processor applying ARGSParams logit controls to left-padded rows."""

    def __init__(self, params: ARGSParams, pads: list[int], width: int):
        self.params, self.pads, self.width = params, pads, width

    def __call__(self, input_ids, scores):
        rows = [row[pad:] for row, pad in zip(input_ids.tolist(), self.pads)]
        return apply_logit_controls(scores, [self.params] * len(rows), rows, [self.width - p for p in self.pads])


def run_method(spec: MethodSpec, models: EvalModels, prompts, max_new_tokens: int, batch_size: int,
               on_batch=None) -> MethodRun:
    start = time.perf_counter()
    if spec.kind in ("greedy", "topk"):
        ids, texts = hf_generate(models, prompts, max_new_tokens, batch_size, top_k=spec.k, temperature=spec.T,
                                 seed=spec.seed, on_batch=on_batch, controls=spec.controls)
        n = list(map(len, ids))
        return MethodRun(texts, n, sum(n), 0, time.perf_counter() - start)
    if spec.kind == "bon":
        return _run_bon(spec, models, prompts, max_new_tokens, batch_size, on_batch, start)
    params = ARGSParams(k=spec.k, w=spec.w, mode=spec.kind.removeprefix("args-"), temperature=spec.T or 0.7,
                        max_new_tokens=max_new_tokens, seed=spec.seed, gate=spec.gate, **spec.controls)
    if models.ray is not None:  # the same requests (prompt i samples with seed + i), decoded on Ray actors
        from ..ray.batch import generate_prompts

        outs = generate_prompts(prompts, params, models.ray[0], batch_size, seed_offsets=True, on_row=on_batch,
                                **models.ray[1])
    else:
        outs = []
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            outs += models.engine.generate(chunk, [dataclasses.replace(params, seed=spec.seed + s + i)
                                                   for i in range(len(chunk))], progress=False)
            if on_batch:
                on_batch(len(chunk))
    n = [len(o.token_ids) for o in outs]
    return MethodRun([o.text for o in outs], n, sum(n), sum(o.rm_tokens for o in outs), time.perf_counter() - start,
                     extra=[{"args_final_reward": o.reward, "finish_reason": o.finish_reason} for o in outs])


def _run_bon(spec, models, prompts, max_new_tokens, batch_size, on_batch, start) -> MethodRun:
    N = spec.n
    expanded = [p for p in prompts for _ in range(N)]
    done = [0]

    def progress(b):  # report whole prompts
        done[0] += b
        while on_batch and done[0] >= N:
            done[0] -= N
            on_batch(1)

    ids, texts = hf_generate(models, expanded, max_new_tokens, batch_size, top_k=spec.k, temperature=spec.T,
                             seed=spec.seed, on_batch=progress, controls=spec.controls)
    rewards = models.score(expanded, [clean_response(t) for t in texts], batch_size)
    pick = [max(range(i * N, (i + 1) * N), key=lambda j: rewards[j]) for i in range(len(prompts))]
    return MethodRun([texts[j] for j in pick], [len(ids[j]) for j in pick], sum(map(len, ids)), len(expanded),
                     time.perf_counter() - start, rewards=[rewards[j] for j in pick],
                     extra=[{"bon_sample_rewards": rewards[i * N:(i + 1) * N]} for i in range(len(prompts))])

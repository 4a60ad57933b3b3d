"""ARGSEngine: the public entry point. Loads (or takes) an LM and an RM, validates requests, and runs them
through a decoder backend."""
from __future__ import annotations

import time
from typing import Iterator, Sequence

from ..chat import Prompt, render_prompt
from ..decoding.bridge import BridgeDecoder, BridgeScorer, RMTextView
from .request import GenerationOutput, Request, finish_output
from ..decoding.naive import NaiveDecoder
from ..decoding.reference import ReferenceDecoder
from ..models.hf import RewardModel, check_pair, context_length, load_pair, resolve_dtype
from ..models.llama import native_unsupported_reason
from ..params import ARGSParams, check_rm_weights
from ..progress import progress_bar
from .llm_engine import LLMEngine, TokenEvent

BACKENDS = ("auto", "native", "reference", "naive")
NATIVE_OPTIONS = {"num_blocks", "block_size", "max_num_batched_tokens", "cache_memory_gb", "use_triton", "share_trunk",
                  "enable_prefix_caching", "step_mode", "rm_num_blocks", "graph_k"}


def _eos_ids(lm, tokenizer) -> set[int]:
    ids = set()
    for eos in (getattr(getattr(lm, "generation_config", None), "eos_token_id", None), lm.config.eos_token_id,
                getattr(tokenizer, "eos_token_id", None)):
        ids.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    return ids


class ARGSEngine:
    """Reward-guided decoding (ARGS) with a causal LM and a scalar reward model sharing its vocabulary.

    >>> engine = ARGSEngine.from_pretrained()           # embedded defaults, offline
    >>> out = engine.generate(["How do I bake bread?"], ARGSParams(k=10, w=1.0, max_new_tokens=64))[0]
    >>> out.text, out.token_ids, out.rewards
    """

    def __init__(self, lm, rm, tokenizer=None, rm_tokenizer=None, backend: str = "auto", raw: bool = False,
                 batch_size: int = 16, eos_ids: set[int] | None = None, rm_weights=None, rm_objective=None,
                 **native_options):
        """backend: "native" (paged caches, continuous batching; Llama-family LM and RM), "reference" (HF
        models with a shared-prefix RM cache; any decoder-only pair), "naive" (the definition, no caches), or
        "auto" (native when the LM and a decoder RM are of the native families, whatever the RM's tokenizer;
        else reference). batch_size: sequences decoded at once. eos_ids: the tokens that end a response
        (default: the LM's and the tokenizer's EOS).
        rm_weights / rm_objective (multi-objective RMs, num_labels > 1): reward = rm_weights . outputs, or the
        one output rm_objective; a request's ARGSParams.rm_weights overrides.
        native_options (native only): num_blocks, block_size, max_num_batched_tokens, cache_memory_gb,
        use_triton, share_trunk (None: detect an RM that is a head on the LM's own trunk), enable_prefix_caching
        (default True: prompts that begin like an earlier one reuse its cached K/V blocks), step_mode ("graph":
        CUDA graphs per batch-size bucket, captured at start-up, the default on CUDA; "static": the same padded
        step without capture; "dynamic": unpadded eager steps, the default on CPU), graph_k (static and graph
        steps: the candidate grid's width, default 10; a step with a row whose k is larger runs dynamically, so
        set it to the largest k you serve; every row's RM work is graph_k candidates there), rm_num_blocks (an
        RM on another tokenizer, run paged: its pool's blocks, in RM tokens; default: the LM's blocks x the RM
        tokens per LM token on a sample text)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.lm, self.tokenizer, self.raw, self.batch_size = lm, tokenizer, raw, batch_size
        self.rm = RewardModel.wrap(rm, rm_weights, rm_objective)
        bridged = check_pair(lm, self.rm, tokenizer, rm_tokenizer)
        self.vocab_size = lm.config.vocab_size
        # bridged: the RM reads its own tokens (an encoder truncates them from the left), so only the LM's limit
        limits = [c for c in (context_length(lm.config), None if bridged else context_length(self.rm.config))
                  if c is not None]
        self.context_length = min(limits) if limits else None
        self.eos_ids = set(eos_ids) if eos_ids is not None else _eos_ids(lm, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)  # pad slots are masked anyway
        self.bridge = RMTextView(tokenizer, rm_tokenizer, context_length(self.rm.config)) if bridged else None
        # a bridged RM runs paged when it is a native-family decoder, else on HF caches: only the LM must suit native
        unsupported = native_unsupported_reason(lm) or (None if bridged else native_unsupported_reason(self.rm.model))
        if backend == "native" and unsupported:
            raise ValueError(f"backend='native' cannot run these models: {unsupported}; use backend='reference'")
        # auto: native, except a bridged RM that cannot run paged (an encoder, or a decoder of another family),
        # which goes to reference (backend="native" still batches its LM side)
        paged_rm = not bridged or (not self.rm.is_encoder and native_unsupported_reason(self.rm.model) is None)
        self.backend = ("native" if not unsupported and paged_rm else "reference") if backend == "auto" else backend
        unknown = set(native_options) - NATIVE_OPTIONS
        if unknown:
            raise ValueError(f"unknown engine options {sorted(unknown)}; native takes {sorted(NATIVE_OPTIONS)}")
        if native_options and self.backend != "native":
            raise ValueError(f"{sorted(native_options)} apply to the native backend only, and this engine runs "
                             f"{self.backend!r}" + (f" ({unsupported})" if unsupported else ""))
        lm_device, rm_device = next(lm.parameters()).device, next(self.rm.model.parameters()).device
        if lm_device != rm_device and self.backend != "native":
            raise ValueError(f"the LM is on {lm_device} and the RM on {rm_device}: only the native backend runs "
                             f"them on two devices (this engine runs {self.backend!r})")
        if self.backend == "native":
            self.decoder = LLMEngine(lm, self.rm, tokenizer, self.eos_ids, max_num_seqs=batch_size,
                                     max_context=self.context_length,
                                     bridge=BridgeScorer(self.rm, self.bridge) if bridged else None, **native_options)
        elif self.backend == "naive":
            self.decoder = NaiveDecoder(lm, self.rm, tokenizer, self.eos_ids, self.bridge)
        elif bridged:
            self.decoder = BridgeDecoder(lm, self.rm, tokenizer, self.eos_ids, self.bridge)
        else:
            self.decoder = ReferenceDecoder(lm, self.rm, tokenizer, self.eos_ids, self.pad_id)

    @classmethod
    def from_pretrained(cls, lm=None, rm=None, device: str = "cpu", dtype="float32", backend: str = "auto",
                        raw: bool = False, rm_device: str | None = None, revision: str | None = None,
                        rm_revision: str | None = None, trust_remote_code: bool = False, **kw) -> "ARGSEngine":
        """lm / rm: a local Hugging Face directory, a Hugging Face model id (downloaded into the hub's cache, or
        read from it when HF_HUB_OFFLINE=1), a loaded model, or None for the embedded defaults
        (SmolLM2-135M-Instruct and the project's trained reward head on its trunk). revision / rm_revision: a Hub
        id's branch, tag or commit. trust_remote_code: run a repository's own modelling code (off unless given).
        dtype: a name, a torch dtype, or "auto" (the checkpoint's). device: the LM's; rm_device: the RM's (default:
        the same). On two devices the native engine keeps each model's cache on its own device and runs the RM's
        candidate forward there; only the top-k crosses over."""
        dtype = resolve_dtype(dtype)
        tokenizer, rm_tokenizer = kw.pop("tokenizer", None), kw.pop("rm_tokenizer", None)  # given: they win
        lm_model, lm_tokenizer, rm_model, rm_loaded_tokenizer = load_pair(lm, rm, device, dtype, rm_device, revision,
                                                                          rm_revision, trust_remote_code)
        return cls(lm_model, rm_model, tokenizer=tokenizer or lm_tokenizer,
                   rm_tokenizer=rm_tokenizer or rm_loaded_tokenizer, backend=backend, raw=raw, **kw)

    def make_request(self, prompt: Prompt, params: ARGSParams) -> Request:
        params.validate(vocab_size=self.vocab_size)
        if params.rm_weights is not None:
            if self.rm.num_objectives == 1:
                raise ValueError("rm_weights applies to multi-objective reward models; this one has one output")
            check_rm_weights(params.rm_weights, self.rm.num_objectives)
        if params.logprobs is not None and self.backend != "native":
            raise ValueError(f"logprobs needs the native backend; this engine runs {self.backend!r}")
        if params.prompt_logprobs is not None and not getattr(self.decoder, "scores_prompts", False):
            raise ValueError(f"prompt_logprobs needs the native backend, or the reference one with an RM on the LM's "
                             f"tokenizer; this engine runs {self.backend!r}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the response")
        ids = render_prompt(self.tokenizer, prompt, raw=self.raw)
        if max(ids) >= self.vocab_size or min(ids) < 0:
            raise ValueError(f"prompt token ids must lie in [0, {self.vocab_size})")
        limit = self.context_length or (len(ids) + params.max_new_tokens)
        if len(ids) >= limit + (params.max_new_tokens == 0):  # scoring alone needs no room after the prompt
            raise ValueError(f"prompt is {len(ids)} tokens; the context holds {limit}, leaving no room to generate")
        req = Request(ids, params, max_len=limit)
        if self.bridge is not None:
            req.rm_prefix = self.bridge.prefix(prompt, self.raw)
        return req

    def _requests(self, prompts, params) -> tuple[list, list[Request]]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)) or \
                (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        params = params if params is not None else ARGSParams()
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(plist)} ARGSParams for {len(prompts)} prompts")
        return prompts, [self.make_request(p, sp) for p, sp in zip(prompts, plist)]  # validate all first

    def generate(self, prompts: Prompt | Sequence[Prompt], params: ARGSParams | Sequence[ARGSParams] | None = None,
                 progress: bool = True) -> list[GenerationOutput]:
        """Decode each prompt with ARGS. `prompts`: strings (chat-formatted with the LM's template unless the
        engine is raw), message lists, or token-id lists. `params`: one ARGSParams for all or one per prompt."""
        prompts, reqs = self._requests(prompts, params)
        # native batches continuously (batch_size sequences at a time); the others decode fixed batches
        step = len(reqs) if self.backend == "native" else self.batch_size
        outs = []
        total = sum(r.params.max_new_tokens for r in reqs)
        with progress_bar(total=total, desc=f"ARGS ({self.backend})", unit="tok", enabled=progress) as bar:
            for s in range(0, len(reqs), step):
                batch = reqs[s:s + step]
                start = time.perf_counter()
                self.decoder.run(batch, on_step=bar.update)
                rate = sum(len(r.out_ids) for r in batch) / max(time.perf_counter() - start, 1e-9)
                for r, p in zip(batch, prompts[s:s + step]):
                    outs.append(finish_output(r, p, self.tokenizer))
                    outs[-1].tokens_per_s = rate
            bar.total = bar.n
        return outs

    def generate_stream(self, prompts: Prompt | Sequence[Prompt],
                        params: ARGSParams | Sequence[ARGSParams] | None = None) -> Iterator[TokenEvent]:
        """Like generate, but yields each token as it is chosen (native backend): TokenEvent(request_id = the
        prompt's index, token_id, reward, text delta, finish_reason, output on the last event). Closing the
        iterator early aborts the unfinished requests and frees their blocks."""
        if self.backend != "native":
            raise ValueError(f"streaming needs the native backend (this engine runs {self.backend!r})")
        _, reqs = self._requests(prompts, params)
        engine, ids = self.decoder, []
        try:
            ids = engine.add_requests(reqs)
            index = {rid: i for i, rid in enumerate(ids)}
            while any(not r.finished for r in reqs):
                for event in engine.step():
                    if event.request_id in index:
                        event.request_id = index[event.request_id]
                        yield event
        finally:
            for rid in ids:
                engine.abort(rid)

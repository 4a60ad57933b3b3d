"""ARGS inside Hugging Face `generate`, two ways.

1. The `custom_generate` hook: the whole decode runs in ARGSEngine (native paged engine for Llama-family pairs,
   the cached reference decoder otherwise) and comes back as `generate` would return it:

       out = model.generate(**inputs, custom_generate=args_engine.hf.generate, reward_model=rm,
                            args_k=10, args_w=1.0, max_new_tokens=128)      # LongTensor [B, P + new]

2. `ARGSLogitsProcessor(reward_model, k, w)`: a logits processor for any `generate` call. It rewrites the
   scores so the top-k tokens get log p + w * r and the rest -inf: greedy `generate` is then ARGS-greedy, and
   sampling with temperature T samples ARGS-stochastic.
"""
from __future__ import annotations

import os

import torch
from transformers import DynamicCache, LogitsProcessor

from ..decoding.common import topk_logprobs
from ..decoding.masks import candidate_mask, commit_candidates, prefill_mask, prefix_positions, select_rows
from ..models.hf import RewardModel, load_rm
from ..params import ARGSParams


def _engine(model, reward_model, backend: str, batch_size: int, eos_ids: set[int], rm_weights=None,
            tokenizer=None, rm_tokenizer=None, rm_revision=None, trust_remote_code=False):
    """The ARGSEngine for these settings, kept on the LM so repeated calls reuse it: one slot, replaced (cache and
    all) when a call asks for other settings, so engines never pile up. reward_model: a loaded model, or a local
    directory / Hub id, loaded once on the LM's device and dtype (with its tokenizer)."""
    from ..engine import ARGSEngine

    source = isinstance(reward_model, (str, os.PathLike))
    rm_id = (str(reward_model), rm_revision) if source else id(reward_model)
    key = (rm_id, backend, batch_size, frozenset(eos_ids), None if rm_weights is None else tuple(rm_weights),
           id(tokenizer), id(rm_tokenizer))
    slot = model.__dict__.get("_args_engine")
    if slot is None or slot[0] != key or (not source and slot[1] is not reward_model):
        model.__dict__["_args_engine"] = None  # drop the old engine (and its KV cache) before building the next
        rm = reward_model
        if source:
            rm, loaded_tokenizer = load_rm(str(reward_model), str(model.device), model.dtype, rm_revision,
                                           trust_remote_code)
            rm_tokenizer = rm_tokenizer or loaded_tokenizer
        slot = (key, reward_model, ARGSEngine(model, rm, tokenizer=tokenizer, rm_tokenizer=rm_tokenizer,
                                              backend=backend, batch_size=batch_size, eos_ids=eos_ids or None,
                                              rm_weights=rm_weights))
        model.__dict__["_args_engine"] = slot
    return slot[2]


def _logit_bias(cfg, args_logit_bias) -> dict[int, float] | None:
    """args_logit_bias plus the config's single-token sequence_bias entries (longer sequences are refused)."""
    bias = dict(args_logit_bias or {})
    for seq, value in (cfg.sequence_bias or {}).items():
        if len(seq) != 1:
            raise ValueError(f"sequence_bias over {len(seq)} tokens is not supported by ARGS; use single tokens")
        bias[seq[0]] = bias.get(seq[0], 0.0) + value
    return bias or None


def _ids_list(value) -> list[int]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else \
        value.flatten().tolist() if isinstance(value, torch.Tensor) else [value]


@torch.no_grad()
def generate(model, input_ids: torch.LongTensor, logits_processor=None, stopping_criteria=None,
             generation_config=None, synced_gpus: bool = False, streamer=None, *, reward_model=None,
             args_k: int = 10, args_w: float = 1.0, args_mode: str | None = None, args_seed: int | None = 0,
             args_backend: str = "auto", args_batch_size: int | None = None, args_presence_penalty: float = 0.0,
             args_frequency_penalty: float = 0.0, args_logit_bias: dict[int, float] | None = None,
             args_gate: float | None = None, args_rm_weights: list[float] | None = None, args_tokenizer=None,
             args_rm_tokenizer=None, args_rm_revision: str | None = None, args_trust_remote_code: bool = False,
             **model_kwargs):
    """A `custom_generate` callable: `model.generate(**inputs, custom_generate=generate, reward_model=rm, ...)`.

    input_ids [B, P] (left padding marked by `attention_mask`) -> LongTensor [B, P + n] with n the longest
    response; rows that stopped early are padded with the pad token after their EOS, as `generate` does.
    `generation_config.return_dict_in_generate` gives a GenerateDecoderOnlyOutput with `sequences` only.

    reward_model: a *ForSequenceClassification model, a RewardModel, or a local directory or Hugging Face model
    id (loaded once on the LM's device and dtype, with the hub's cache and offline rules; args_rm_revision: its
    branch, tag or commit; args_trust_remote_code: run its repository's code, never implied).
    args_k, args_w: ARGS candidates and reward weight. args_mode: "greedy" or "stochastic" (default: stochastic
    when `do_sample=True`, with the config's temperature). args_seed: sampling seed of the first row (row b
    uses args_seed + b, so num_return_sequences > 1 gives distinct samples). args_backend: ARGSEngine backend.
    args_batch_size: sequences decoded at once (default 16; any number of rows is decoded). num_beams > 1 is
    refused. Logit controls come from the config (repetition_penalty, no_repeat_ngram_size, top_p, min_p,
    single-token sequence_bias) and from args_presence_penalty, args_frequency_penalty, args_logit_bias.
    args_gate: the uncertainty gate tau (ARGSParams.gate). args_rm_weights: a multi-objective RM's weights
    (reward = weights . outputs), or pass a RewardModel built with them. args_tokenizer, args_rm_tokenizer: the
    LM's and the RM's tokenizers, for an RM on another tokenizer or an encoder RM (the tokenizer bridge: the RM
    reads the text of the prompt ids as they are, then the response's text).
    Honoured from `generate`: max_new_tokens / max_length, eos_token_id, pad_token_id, do_sample, temperature.
    Logits processors, stopping criteria and streamers do not apply (ARGS picks every token).
    """
    if reward_model is None:
        raise ValueError("args_engine.hf.generate needs reward_model=<a reward model>")
    cfg = generation_config if generation_config is not None else model.generation_config
    if (cfg.num_beams or 1) > 1:
        raise ValueError(f"args_engine.hf.generate picks one token per step and does not run beam search "
                         f"(num_beams={cfg.num_beams}); use num_beams=1, or ARGSLogitsProcessor in a beam search")
    B, P = input_ids.shape  # generate has already repeated each prompt num_return_sequences times
    max_new = (cfg.max_length - P) if cfg.max_length is not None else cfg.max_new_tokens
    mode = args_mode or ("stochastic" if cfg.do_sample else "greedy")
    # row b samples with seed args_seed + b: the repeated rows of one prompt are distinct samples
    # as in generate, top_p and min_p are sampling warpers: greedy calls leave them out
    controls = dict(repetition_penalty=cfg.repetition_penalty or 1.0,
                    no_repeat_ngram_size=cfg.no_repeat_ngram_size or 0,
                    top_p=(cfg.top_p or 1.0) if cfg.do_sample else 1.0,
                    min_p=(cfg.min_p or 0.0) if cfg.do_sample else 0.0,
                    presence_penalty=args_presence_penalty, frequency_penalty=args_frequency_penalty,
                    logit_bias=_logit_bias(cfg, args_logit_bias))
    params = [ARGSParams(k=args_k, w=args_w, mode=mode, temperature=cfg.temperature or 1.0, max_new_tokens=max_new,
                         seed=None if args_seed is None else args_seed + b, gate=args_gate, **controls)
              for b in range(B)]
    eos = set(_ids_list(cfg.eos_token_id))
    engine = _engine(model, reward_model, args_backend, args_batch_size or 16, eos, args_rm_weights, args_tokenizer,
                     args_rm_tokenizer, args_rm_revision, args_trust_remote_code)
    eos = engine.eos_ids

    mask = model_kwargs.get("attention_mask")  # [B, P] or None (generate drops an all-ones mask)
    rows = input_ids.tolist()
    prompts = rows if mask is None else [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, mask.tolist())]
    outs = engine.generate(prompts, params, progress=False)

    pad = cfg.pad_token_id if cfg.pad_token_id is not None else min(eos, default=0)
    pad = _ids_list(pad)[0]
    n = max(len(o.token_ids) for o in outs)
    new = torch.full((B, n), pad, dtype=torch.long)  # [B, n]
    for b, o in enumerate(outs):
        new[b, :len(o.token_ids)] = torch.tensor(o.token_ids, dtype=torch.long)
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)  # [B, P + n]
    if cfg.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences


class ARGSLogitsProcessor(LogitsProcessor):
    """Reward-guided scores for any `generate` call: `logits_processor=[ARGSLogitsProcessor(rm, k, w)]`.

    (input_ids [B, T], scores [B, V]) -> [B, V]: the LM's top-k tokens get log p + w * r(prefix + token), the
    others -inf. With greedy decoding this is ARGS-greedy; with `do_sample=True, temperature=T` it samples from
    softmax((log p + w * r) / T) over the k candidates, i.e. ARGS-stochastic.

    Padding: the processor does not see generate's attention mask. Pass the prompt's `attention_mask` [B, P]
    (rows may be repeated by num_return_sequences) or `pad_token_id` (a leading run of it is padding); pad
    positions are then masked out of the RM and position ids count valid tokens only, so rewards do not depend
    on padding. Without either, every token counts.

    Caching: the RM keeps one prefix cache per row across calls; the k candidates go through it in one forward
    (a depth-1 tree mask) and the chosen one's K/V is kept when the next call shows which token was picked.
    Beam search works too: rows reordered between calls take their cache rows with them. When the next call
    does not continue the last one (a new generate call, a token outside the candidates), the cache is rebuilt
    from the full prefix, so results never depend on the cache. Rows that finished (their
    new token is `pad_token_id`) stay in the batch with don't-care rewards. Not thread-safe: one instance per
    concurrent generate call.
    """

    def __init__(self, reward_model, k: int = 10, w: float = 1.0, attention_mask: torch.Tensor | None = None,
                 pad_token_id: int | None = None, rm_weights: list[float] | None = None, rm_objective: int | None = None):
        ARGSParams(k=k, w=w)  # validates k and w
        self.rm = RewardModel.wrap(reward_model, rm_weights, rm_objective)  # multi-objective: weights . outputs
        if self.rm.is_encoder:
            raise ValueError(f"ARGSLogitsProcessor scores the LM's token ids, which an encoder RM "
                             f"({self.rm.config.model_type}) cannot read; use the custom_generate hook with "
                             "args_tokenizer= and args_rm_tokenizer= (the tokenizer bridge)")
        self.k, self.w, self.pad_token_id = k, float(w), pad_token_id
        self.prompt_mask = attention_mask
        self.reset()

    def reset(self) -> None:
        """Forget the RM cache (the next call rebuilds it)."""
        self._ids = self._valid = self._cand = self._cache = None

    def _prefix_valid(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> valid [B, T]: False on left padding."""
        valid = torch.ones_like(ids, dtype=torch.bool)
        if self.prompt_mask is not None:
            mask = self.prompt_mask.to(ids.device).bool()  # [B0, P]
            if ids.shape[0] != mask.shape[0]:
                if ids.shape[0] % mask.shape[0]:
                    raise ValueError(f"attention_mask has {mask.shape[0]} rows but generate runs {ids.shape[0]}")
                mask = mask.repeat_interleave(ids.shape[0] // mask.shape[0], dim=0)
            valid[:, :mask.shape[1]] = mask
        elif self.pad_token_id is not None:
            valid = (ids != self.pad_token_id).long().cumsum(1) > 0
        return valid

    def _continue(self, ids: torch.Tensor) -> bool:
        """Commit the picked candidate of the last call if `ids` extends it by one token; else False. Beam search
        reorders (and repeats) rows between calls: each row is then matched to the previous row it extends, and
        the cache rows follow it."""
        if self._ids is None or ids.shape != (self._ids.shape[0], self._ids.shape[1] + 1):
            return False
        if not torch.equal(ids[:, :-1], self._ids):
            same = (ids[:, None, :-1] == self._ids[None]).all(-1)  # [B, B]: row b extends previous row j
            if not bool(same.any(1).all()):
                return False
            src = same.long().argmax(1)  # [B]
            select_rows(self._cache, src)
            self._ids, self._cand, self._valid = self._ids[src], self._cand[src], self._valid[src]
        last = ids[:, -1]  # [B]
        hit = self._cand == last[:, None]  # [B, k]
        done = last == self.pad_token_id if self.pad_token_id is not None else torch.zeros_like(last, dtype=torch.bool)
        if not bool((hit.any(1) | done).all()):
            return False
        commit_candidates(self._cache, hit.long().argmax(1), self.k)  # finished rows keep any candidate
        self._valid = torch.cat([self._valid, torch.ones_like(last, dtype=torch.bool)[:, None]], dim=1)
        return True

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] != self.rm.config.vocab_size:
            raise ValueError(f"ARGSLogitsProcessor needs an RM over the LM's vocabulary (LM scores over "
                             f"{scores.shape[-1]} tokens, RM vocab_size={self.rm.config.vocab_size}); for an RM on "
                             "another tokenizer use the custom_generate hook with args_tokenizer= and "
                             "args_rm_tokenizer= (the tokenizer bridge)")
        device = next(self.rm.parameters()).device
        dtype = next(self.rm.parameters()).dtype
        ids = input_ids.to(device)  # [B, T]
        if not self._continue(ids):
            self._valid = self._prefix_valid(ids)
            self._cache = DynamicCache()
            self.rm.forward_trunk(input_ids=ids, attention_mask=prefill_mask(self._valid, dtype),
                                  position_ids=prefix_positions(self._valid), cache=self._cache, use_cache=True)
        logp, cand = topk_logprobs(scores.to(device), self.k)  # [B, k]
        pos = self._valid.sum(1)  # [B] position of the token being chosen
        hidden = self.rm.forward_trunk(input_ids=cand, attention_mask=candidate_mask(self._valid, self.k, dtype),
                                       position_ids=pos[:, None].expand(-1, self.k), cache=self._cache,
                                       use_cache=True)  # [B, k, H]
        rewards = self.rm.rewards(hidden)  # [B, k] (multi-objective: the default weights)
        self._ids, self._cand = ids, cand
        out = torch.full_like(scores, float("-inf"))  # [B, V]
        return out.scatter(1, cand.to(scores.device), (logp + self.w * rewards.to(logp.dtype)).to(scores))

"""Reward models on another tokenizer, and encoder reward models: the RM reads text.

Definition. At each step the RM scores candidate c on the text it would see if everything were re-tokenized
from scratch:

    rm_ids(c) = rm_tokenizer(prefix + lm_tokenizer.decode(response_ids + [c], skip_special_tokens=True))

where `prefix` is the prompt rendered with the RM's own chat template (generation prompt included; the
"role: content" fallback without one), or the prompt's text as is for raw prompts. An LM token that ends inside
a UTF-8 character decodes as the full decode does (U+FFFD until the character completes). A decoder RM's reward
is its head at the last token of rm_ids(c); an encoder's is its classifier on rm_ids(c), truncated from the left
to its maximum length. NaiveDecoder computes exactly this, with no caches: the oracle.

Keeping the RM cache (BridgeDecoder). Re-tokenizing the text can change only its last few tokens, so the RM
cache holds the committed RM tokens and, each step, is cut back to the longest prefix that every candidate's
rm_ids still starts with (usually all of it). The candidates' variable-length tails go through the RM in one
forward, each attending to the shared prefix and to its own earlier tail tokens (a ragged tree mask), and the
chosen candidate's tail K/V stay in the cache. Every K/V in the cache is then that of a prefix of rm_ids(c),
so the scores equal the definition's."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from ..engine.request import Request, append_token
from ..models.hf import RewardModel, next_token_logits
from .common import gated, select_candidates, topk_logprobs
from .logit_controls import apply_logit_controls
from .masks import _additive


# A text of everyday English, with digits, punctuation and a little of other scripts: what the RM pool's size is
# measured on (RM tokens per LM token; engine/llm_engine.py).
SIZING_SAMPLE = ("User: Could you help me plan a weekend trip to the mountains? We are two adults and a child, "
                 "leaving on Friday at 5 pm, with a budget of about $600.\nAssistant: Of course! Here is a simple "
                 "plan: drive up on Friday evening (about 3 hours), stay two nights in a family-friendly cabin, and "
                 "spend Saturday on an easy 8 km trail with a picnic. On Sunday, visit the village market before "
                 "heading home. Bonne route ! Gute Reise! ¡Buen viaje!")


class RMTextView:
    """How a bridged RM reads a request: the RM-side prompt text, and the RM token ids of prompt + response."""

    def __init__(self, lm_tokenizer, rm_tokenizer, max_length: int | None = None):
        if lm_tokenizer is None or rm_tokenizer is None:
            raise ValueError("a reward model on another tokenizer needs both tokenizers (tokenizer= and "
                             "rm_tokenizer=) to turn LM tokens into RM text")
        self.lm_tok, self.rm_tok, self.max_length = lm_tokenizer, rm_tokenizer, max_length
        self._template = bool(getattr(rm_tokenizer, "chat_template", None))

    def prefix(self, prompt, raw: bool) -> str:
        """The prompt as the RM reads it before the response."""
        if not isinstance(prompt, str) and all(isinstance(t, int) for t in prompt):
            return self.lm_tok.decode(prompt)  # token ids: their text as is
        if isinstance(prompt, str) and raw:
            return prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self._template:
            return self.rm_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def token_ratio(self) -> float:
        """RM tokens per LM token on SIZING_SAMPLE (how much larger the RM's cache must be than the LM's), within
        [1/4, 4]."""
        lm = len(self.lm_tok(SIZING_SAMPLE, add_special_tokens=False)["input_ids"])
        rm = len(self.rm_tok(SIZING_SAMPLE, add_special_tokens=False)["input_ids"])
        return min(4.0, max(0.25, rm / max(lm, 1)))

    def response_text(self, response_ids: list[int]) -> str:
        return self.lm_tok.decode(response_ids, skip_special_tokens=True)

    def ids(self, prefix: str, response_ids: list[int]) -> list[int]:
        """rm_ids: prefix + the response's text, tokenized from scratch (special tokens as a template writes them,
        else the tokenizer's own, e.g. BOS or [CLS] ... [SEP])."""
        return self.ids_many(prefix, [response_ids])[0]

    def ids_many(self, prefix: str, responses: list[list[int]]) -> list[list[int]]:
        """rm_ids of several responses (a step's candidates) in one batched tokenizer call."""
        return self.ids_rows([(prefix, responses)])[0]

    def ids_rows(self, rows: list[tuple[str, list[list[int]]]]) -> list[list[list[int]]]:
        """rm_ids of several rows' responses, (prefix, responses) each, in one batched tokenizer call (the fast
        tokenizer spreads a batch over its threads)."""
        ids = self.text_ids([prefix + self.response_text(r) for prefix, responses in rows for r in responses])
        out, at = [], 0
        for _, responses in rows:
            out.append(ids[at:at + len(responses)])
            at += len(responses)
        return out

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """RM token ids of whole texts (prefix + response text), one batched tokenizer call."""
        return self.rm_tok(texts, add_special_tokens=not self._template)["input_ids"]

    def encode(self, prefix: str, responses: list[list[int]], device,
               template_specials: bool = False) -> dict[str, torch.Tensor]:
        """Encoder input for several responses: padded, truncated from the left to max_length."""
        return self.encode_texts([prefix + self.response_text(r) for r in responses], device, template_specials)

    def encode_texts(self, texts: list[str], device, template_specials: bool = False) -> dict[str, torch.Tensor]:
        """Encoder input for whole texts: padded (attention_mask 0 on the padding), truncated from the left to
        max_length. An encoder's texts get the tokenizer's special tokens (e.g. [CLS] ... [SEP]) always;
        template_specials (a RewardAdapter): as a decoder RM's, only where no chat template wrote them already."""
        side = getattr(self.rm_tok, "truncation_side", "right")
        self.rm_tok.truncation_side = "left"  # keep the newest text; the special tokens stay
        pad = self.rm_tok.pad_token_id is not None  # a tokenizer without a pad token (Llama 3's): padded here
        try:
            enc = self.rm_tok(texts, padding=pad, truncation=self.max_length is not None,
                              max_length=self.max_length, add_special_tokens=not (template_specials and self._template),
                              return_tensors="pt" if pad else None)
        finally:
            self.rm_tok.truncation_side = side
        if not pad:
            enc = _pad(enc["input_ids"], getattr(self.rm_tok, "padding_side", "right"))
        return {k: v.to(device) for k, v in enc.items()}


def _pad(rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
    """Token rows -> input_ids [n, T] (padding id 0) and attention_mask [n, T] (0 on the padding)."""
    T = max(len(r) for r in rows)
    ids, mask = torch.zeros(len(rows), T, dtype=torch.long), torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        at = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, at], mask[i, at] = torch.tensor(r, dtype=torch.long), 1
    return {"input_ids": ids, "attention_mask": mask}


def bridged_rewards(rm: RewardModel, view: RMTextView, prefix: str, response_ids: list[int], cands: list[int],
                    weights, device) -> torch.Tensor:
    """The definition, from scratch: the reward of each candidate [n] (NaiveDecoder's RM call)."""
    responses = [response_ids + [c] for c in cands]
    if rm.is_encoder:
        return rm.encoder_rewards(view.encode(prefix, responses, device, rm.is_adapter), weights)
    out = []
    for r in responses:
        ids = torch.tensor([view.ids(prefix, r)], device=device)
        hidden = rm.forward_trunk(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)  # [1, T, H]
        out.append(rm.rewards(hidden[:, -1], None if weights is None else weights[:1])[0])
    return torch.stack(out)


class BridgeState:
    """One request's RM cache under the bridge: the K/V of `cached`, the RM tokens committed so far."""

    def __init__(self):
        self.cache, self.cached = DynamicCache(), []


class BridgeScorer:
    """Scores one request's candidates through the bridge: a decoder RM on the request's own cache (the module
    docstring), an encoder RM on the k texts in one batch. Used by BridgeDecoder and by the native engine."""

    def __init__(self, rm: RewardModel, view: RMTextView):
        self.rm, self.view = rm, view
        self.rm_tokens_recomputed = 0  # RM tokens re-read because re-tokenization changed them (a statistic)

    def score(self, req: Request, cands: list[int], state: BridgeState | None, weights, device):
        """-> (rewards [n] of the candidates, commit(j): keep candidate j's RM tokens in `state`)."""
        if self.rm.is_encoder:
            return bridged_rewards(self.rm, self.view, req.rm_prefix, req.out_ids, cands, weights, device), \
                lambda j: None
        return self._score_cached(req, cands, state, weights, device)

    def score_encoder_rows(self, reqs: list[Request], cands: list[list[int]], weights, device) -> list[torch.Tensor]:
        """An encoder RM, several rows: every row's candidate texts in one batched forward. weights [B, N] (one
        row per request) or None. -> each row's rewards [n]."""
        texts = [req.rm_prefix + self.view.response_text(req.out_ids + [c]) for req, cs in zip(reqs, cands)
                 for c in cs]
        counts = [len(cs) for cs in cands]
        if weights is not None:  # [sum n, N]: each candidate gets its row's weights
            weights = weights.repeat_interleave(torch.tensor(counts, device=weights.device), dim=0)
        inputs = self.view.encode_texts(texts, device, self.rm.is_adapter)
        return list(self.rm.encoder_rewards(inputs, weights).split(counts))

    def _score_cached(self, req: Request, cands: list[int], state: BridgeState, weights, device):
        cache, cached = state.cache, state.cached
        rm_ids = self.view.ids_many(req.rm_prefix, [req.out_ids + [c] for c in cands])
        keep, shared = split_tails(cached, rm_ids)
        if keep < len(cached):
            self.rm_tokens_recomputed += len(cached) - keep
            _crop(cache, keep)
        end = extension(keep, shared)
        if end > keep:  # the candidates share more than the cache holds (the prompt, at the first step):
            # one causal forward extends it, instead of every tail repeating those tokens under the tree mask
            self.rm.forward_trunk(input_ids=torch.tensor([rm_ids[0][keep:end]], device=device),
                                  position_ids=torch.arange(keep, end, device=device)[None], cache=cache,
                                  use_cache=True)
        keep = end
        tails = [r[keep:] for r in rm_ids]
        lens = [len(t) for t in tails]
        flat = torch.tensor([sum(tails, [])], device=device)  # [1, S]
        pos = torch.tensor([[keep + i for t in tails for i in range(len(t))]], device=device)
        mask = _additive(_tree_keep(lens, keep, device), next(self.rm.parameters()).dtype)[None, None]
        hidden = self.rm.forward_trunk(input_ids=flat, attention_mask=mask, position_ids=pos, cache=cache,
                                       use_cache=True)[0]  # [S, H]
        ends = torch.tensor(lens, device=device).cumsum(0) - 1  # last token of each tail
        rewards = self.rm.rewards(hidden[ends], None if weights is None else weights.expand(len(cands), -1))
        starts = [e - n + 1 for e, n in zip(ends.tolist(), lens)]

        def commit(j: int) -> None:
            _keep_segment(cache, keep, keep + starts[j], lens[j])
            state.cached = rm_ids[j]
        req.rm_tokens += sum(lens) - len(cands)  # the tails' extra tokens (select_candidates counts one each)
        return rewards, commit


class BridgeDecoder:
    """The reference backend for bridged RMs: one request at a time, the LM on its own KV cache, a decoder RM
    on the cache described in the module docstring (an encoder RM reads the k candidate texts in one batch)."""

    name = "reference"

    def __init__(self, lm, rm: RewardModel, tokenizer, eos_ids: set[int], view: RMTextView):
        self.lm, self.rm, self.tokenizer, self.eos_ids = lm, rm, tokenizer, eos_ids
        self.scorer = BridgeScorer(rm, view)

    @property
    def rm_tokens_recomputed(self) -> int:
        return self.scorer.rm_tokens_recomputed

    @torch.no_grad()
    def run(self, reqs: list[Request], on_step=None) -> None:
        for req in reqs:
            self._decode(req, on_step)

    def _decode(self, req: Request, on_step) -> None:
        device = next(self.lm.parameters()).device
        lm_cache, state = DynamicCache(), BridgeState()
        ids = torch.tensor([req.prompt_ids], device=device)
        logits = next_token_logits(self.lm, input_ids=ids, cache=lm_cache, use_cache=True)  # [1, V]
        weights = self.rm.row_weights([req.params.rm_weights], device)
        while not req.finished:
            k = req.params.k
            logits = apply_logit_controls(logits, [req.params], [req.prompt_ids + req.out_ids],
                                          [len(req.prompt_ids)])
            logp, cand = topk_logprobs(logits, k)  # [1, k]
            n = 1 if gated([req.params], logp[:, 0].tolist())[0] else k
            cands = cand[0, :n].tolist()
            rewards, commit = self.scorer.score(req, cands, state, weights, device)
            j = select_candidates(logp[:, :n], rewards[None], [req], [n < k])[0].item()
            commit(j)
            token = cands[j]
            append_token(req, token, rewards[j].item(), self.tokenizer, self.eos_ids)
            if on_step:
                on_step(1)
            if not req.finished:
                logits = next_token_logits(self.lm, input_ids=torch.tensor([[token]], device=device), cache=lm_cache,
                                           use_cache=True)

EXTEND_MIN = 4  # shared tokens past the cache that get a causal forward of their own; fewer ride in the tails


def split_tails(cached: list[int], rm_ids: list[list[int]]) -> tuple[int, int]:
    """cached: the RM tokens whose K/V a cache holds; rm_ids: each candidate's (the definition's). -> (keep, shared):
    the cache's first `keep` tokens begin every candidate's rm_ids (the rest of the cache must go), and all
    candidates share their first `shared` tokens (>= keep; each keeps at least one token of its own to score)."""
    shared = min(len(r) - 1 for r in rm_ids)
    for r in rm_ids[1:]:
        shared = common_prefix(rm_ids[0], r, shared)
    return common_prefix(cached, rm_ids[0], min(len(cached), shared)), shared


def extension(keep: int, shared: int) -> int:
    """Where the candidates' tails start: past the shared tokens when enough of them are not cached yet (the
    prompt at the first step: one causal forward reads them once, not once per candidate), else at `keep`."""
    return shared if shared - keep >= EXTEND_MIN else keep


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading items a and b share, at most `limit`. Slices compare in C: the usual answer (all of
    them) costs one comparison, a mismatch a bisection."""
    lo, hi = 0, min(limit, len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _tree_keep(lens: list[int], prefix: int, device) -> torch.Tensor:
    """Ragged tree over a cached prefix: each tail token sees the whole prefix and its own tail up to itself.
    -> keep [S, prefix + S] (bool)"""
    S = sum(lens)
    seg = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))  # [S]
    idx = torch.arange(S, device=device)
    own = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])  # [S, S]
    return torch.cat([torch.ones(S, prefix, dtype=torch.bool, device=device), own], dim=1)


def _crop(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions (transformers' own crop has changed meaning across versions)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]


def _keep_segment(cache: DynamicCache, prefix: int, start: int, length: int) -> None:
    """The cache holds prefix + every tail; keep the prefix and the tail at [start, start + length)."""
    for layer in cache.layers:
        for name in ("keys", "values"):
            kv = getattr(layer, name)  # [1, H, prefix + S, D]
            if start != prefix:  # move the chosen tail next to the prefix, in place: no copy of the prefix
                kv[:, :, prefix:prefix + length] = kv[:, :, start:start + length].clone()
            setattr(layer, name, kv[:, :, :prefix + length])

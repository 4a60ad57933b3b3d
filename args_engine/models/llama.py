"""Native Llama-family trunk (Llama 2/3, SmolLM2, Mistral, Qwen2 with q/k/v bias) on paged KV caches.

It runs the weights of a loaded Hugging Face model in place (its Linear, RMSNorm, MLP and rotary modules), so
numerics match the HF forward and q/k/v biases come for free; only attention and the caches are ours."""
from __future__ import annotations

import torch

from .paged_ops import PagedOps, chunk_attention

NATIVE_MODEL_TYPES = ("llama", "mistral", "qwen2")


def native_unsupported_reason(model) -> str | None:
    """Why the native runner cannot run `model` (None when it can)."""
    cfg = model.config
    if cfg.model_type not in NATIVE_MODEL_TYPES:
        return f"model_type {cfg.model_type!r} is not one of {NATIVE_MODEL_TYPES}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (native supports silu)"
    layer = model.base_model.layers[0]
    attn = layer.self_attn
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or hasattr(attn, "q_norm"):
        return "attention is not the plain Llama q/k/v/o layout"
    return None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D], cos/sin [N, D]: HF's rotate-half RoPE."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class PagedLlama:
    """Trunk forwards over paged caches k/v [L, NB, BS, Hkv, D]. Returns final-norm hidden states; the caller
    applies its head (lm_head or the RM's scalar score)."""

    def __init__(self, model, ops: PagedOps):
        reason = native_unsupported_reason(model)
        if reason:
            raise ValueError(f"the native runner cannot run {type(model).__name__}: {reason}")
        base = model.base_model
        cfg = model.config
        self.embed, self.layers, self.norm, self.rotary = base.embed_tokens, base.layers, base.norm, base.rotary_emb
        attn = self.layers[0].self_attn
        self.num_layers = len(self.layers)
        self.head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.scale = getattr(attn, "scaling", self.head_dim ** -0.5)
        self.ops = ops
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device

    def _qkv(self, layer, x: torch.Tensor, cos, sin):
        """x [N, H] (normed) -> q [N, Hq, D], k, v [N, Hkv, D] with RoPE applied to q and k."""
        attn = layer.self_attn
        q = attn.q_proj(x).view(-1, self.num_heads, self.head_dim)
        k = attn.k_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def _rope(self, x: torch.Tensor, positions: torch.Tensor):
        cos, sin = self.rotary(x, positions[None])  # [1, N, D]
        return cos[0], sin[0]

    @torch.no_grad()
    def forward_chunks(self, ids, positions, slots, chunks, kv) -> torch.Tensor:
        """Prefill. ids, positions, slots [N]: the concatenated chunks; chunks: (offset in ids, length, start
        position, block_table row) per sequence. Stores every chunk's K/V. -> hidden [N, H]"""
        k_cache, v_cache = kv
        h = self.embed(ids)  # [N, H]
        cos, sin = self._rope(h, positions)
        for li, layer in enumerate(self.layers):
            x = layer.input_layernorm(h)
            q, k, v = self._qkv(layer, x, cos, sin)
            # Every chunk stores before any chunk attends: a prompt admitted this step may hit blocks another
            # chunk of this step fills (Scheduler._add_chunk relies on it).
            self.ops.store_kv(k, v, k_cache[li], v_cache[li], slots)
            out = torch.empty_like(q)
            for off, n, start, table in chunks:
                out[off:off + n] = chunk_attention(q[off:off + n], k_cache[li], v_cache[li], table, start, self.scale)
            h = h + layer.self_attn.o_proj(out.flatten(1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.norm(h)

    @torch.no_grad()
    def forward_candidates(self, ids, positions, block_tables, context_lens, kv, store_slots=None):
        """ids [B, K]: K tokens per sequence, all at positions[b] == context_lens[b], each attending to the
        sequence's cached prefix plus itself. store_slots [B] (K = 1 only): write the new K/V into the cache
        (LM decode); otherwise the new K/V come back for args_select to commit the chosen one.
        -> hidden [B, K, H], new keys and values [L, B, K, Hkv, D] (None when stored)"""
        B, K = ids.shape
        k_cache, v_cache = kv
        h = self.embed(ids.reshape(-1))  # [B*K, H]
        cos, sin = self._rope(h, positions.repeat_interleave(K))
        new_k = new_v = None
        if store_slots is None:
            shape = (self.num_layers, B, K, self.num_kv_heads, self.head_dim)
            new_k = torch.empty(shape, dtype=k_cache.dtype, device=h.device)
            new_v = torch.empty_like(new_k)
        for li, layer in enumerate(self.layers):
            x = layer.input_layernorm(h)
            q, k, v = self._qkv(layer, x, cos, sin)
            if store_slots is None:
                new_k[li], new_v[li] = k.view(B, K, *k.shape[1:]), v.view(B, K, *v.shape[1:])
            out = self.ops.candidate_attention(q.view(B, K, *q.shape[1:]), k.view(B, K, *k.shape[1:]),
                                               v.view(B, K, *v.shape[1:]), k_cache[li], v_cache[li], block_tables,
                                               context_lens, self.scale)  # [B, K, Hq, D]
            if store_slots is not None:
                self.ops.store_kv(k, v, k_cache[li], v_cache[li], store_slots)
            h = h + layer.self_attn.o_proj(out.reshape(B * K, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.norm(h).view(B, K, -1), new_k, new_v

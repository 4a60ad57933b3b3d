"""Native Llama-family trunk on paged KV caches: Llama 2/3, SmolLM2, Mistral, Qwen2 (q/k/v bias), Qwen3 (per-head
q/k RMSNorm before RoPE), Phi-3 (q/k/v and gate/up already fused in the checkpoint), Gemma 2 ((1 + w) sandwich
norms, GeLU, soft-capped attention scores; the runner caps the final logits; HF's embedding module scales) and
Gemma 3 (Gemma 2's layout with per-head q/k norms and a local or global RoPE per layer).

It runs the weights of a loaded Hugging Face model in place (its RMSNorm and rotary modules, its Linear weights),
so numerics match the HF forward and q/k/v biases come for free; attention and the caches are ours. At load,
each layer's q/k/v weights become one [(Hq + 2 Hkv) D, H] matrix and gate/up one [2 I, H] matrix, and the HF
modules' parameters become views of them (no extra memory): one matmul where HF runs three, or two."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .paged_ops import PagedOps

NATIVE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
_GEMMA = ("gemma2", "gemma3_text")  # (1 + w) norms of their own, sandwich norms; Gemma 2 soft-caps too
_STATIC_ROPE = ("default", "linear", "llama3")  # rope types whose values depend on the position alone


def native_unsupported_reason(model) -> str | None:
    """Why the native runner cannot run `model` (None when it can): the family by name when it is not one of
    NATIVE_MODEL_TYPES, or the setting of a supported family it does not handle."""
    cfg = model.config
    if cfg.model_type not in NATIVE_MODEL_TYPES:
        return f"model family {cfg.model_type!r} is not one of the native families {NATIVE_MODEL_TYPES}"
    if cfg.model_type not in _GEMMA and getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (native supports silu)"
    if getattr(cfg, "partial_rotary_factor", 1.0) != 1.0:
        return f"partial_rotary_factor {cfg.partial_rotary_factor} (native rotates the whole head)"
    attn, mlp = model.base_model.layers[0].self_attn, model.base_model.layers[0].mlp
    split = all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj"))
    if not (split or hasattr(attn, "qkv_proj")) or not hasattr(attn, "o_proj"):
        return "attention is neither the q/k/v/o nor the qkv/o layout"
    if not (all(hasattr(mlp, n) for n in ("gate_proj", "up_proj")) or hasattr(mlp, "gate_up_proj")):
        return "the MLP is neither gate/up/down nor gate_up/down"
    if hasattr(attn, "q_norm") != (cfg.model_type in ("qwen3", "gemma3_text")):
        return "q/k norms outside Qwen3 and Gemma 3"
    return None


def fuse_linears(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linears' weights (and biases) along the output dim and make each linear's parameters views
    of the result, so the HF modules keep working on the same memory. -> (weight [sum out, in], bias or None)."""
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = [m.bias is not None for m in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError("cannot fuse linears where only some have a bias")
    bias = torch.cat([m.bias.detach() for m in linears]) if all(has_bias) else None
    off = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[off:off + n], requires_grad=m.weight.requires_grad)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[off:off + n], requires_grad=m.bias.requires_grad)
        off += n
    return weight, bias


class RMSNorm:
    """HF's Llama RMSNorm (float32 statistics, weight applied in the input dtype) as one fused op: the same
    values (checked against the module in the tests), a quarter of the op launches."""

    def __init__(self, module):
        self.weight = module.weight
        self.eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps")
        self.shape = (module.weight.shape[0],)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.rms_norm(x.to(torch.float32), self.shape, eps=self.eps).to(x.dtype)


def _norm(module, gemma: bool):
    """The fused Llama RMSNorm, or (Gemma's (1 + w) norm) the HF module itself."""
    return module if gemma else RMSNorm(module)


class _FusedLayer:
    """One decoder layer's fused projections (views shared with the HF modules) and its norms: Llama-style
    (input norm; post-attention norm before the MLP) or Gemma 2's sandwich (norms after attention and after
    the MLP too)."""

    def __init__(self, layer, gemma: bool = False):
        attn, mlp = layer.self_attn, layer.mlp
        if hasattr(attn, "qkv_proj"):  # Phi-3: fused in the checkpoint
            self.qkv_w, self.qkv_b = attn.qkv_proj.weight, attn.qkv_proj.bias
        else:
            self.qkv_w, self.qkv_b = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        if hasattr(mlp, "gate_up_proj"):
            self.gate_up_w = mlp.gate_up_proj.weight
        else:
            self.gate_up_w, _ = fuse_linears([mlp.gate_proj, mlp.up_proj])
        self.q_norm = self.k_norm = None
        if hasattr(attn, "q_norm"):  # Qwen3, Gemma 3
            self.q_norm, self.k_norm = _norm(attn.q_norm, gemma), _norm(attn.k_norm, gemma)
        self.rope_type = None  # Gemma 3: local or global RoPE (PagedLlama sets it)
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn")
        self.act = F.silu if isinstance(act, torch.nn.SiLU) else act
        self.input_norm = _norm(layer.input_layernorm, gemma)
        if gemma:
            self.attn_out_norm = layer.post_attention_layernorm
            self.mlp_in_norm, self.mlp_out_norm = layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm
        else:
            self.attn_out_norm = self.mlp_out_norm = None
            self.mlp_in_norm = RMSNorm(layer.post_attention_layernorm)

    def attn_residual(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """h + o_proj(attention) (Gemma: normed first) -> then h + MLP block."""
        out = self.o_proj(attn_out)
        h = h + (out if self.attn_out_norm is None else self.attn_out_norm(out))
        gate, up = F.linear(self.mlp_in_norm(h), self.gate_up_w).chunk(2, dim=-1)
        out = self.down_proj(self.act(gate) * up)
        return h + (out if self.mlp_out_norm is None else self.mlp_out_norm(out))


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N, D] (HF's) -> the [N, 1, D] pair rotate() takes, made once per forward: sin's first half
    negated, so that rotate_half(x) * sin == roll(x, D/2) * signed sin (exactly: only signs move)."""
    half = sin.shape[-1] // 2
    return cos[:, None], torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D]; cos, signed_sin [N, 1, D] from rope_tables: HF's rotate-half RoPE, bit for bit."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class RopeTable:
    """cos and signed sin of one RoPE type for positions 0..P-1, made by HF's rotary module (which computes each
    position's values elementwise, so indexing the table gives the same values) and grown on demand. Rope types
    whose values depend on the sequence length (dynamic NTK, longrope) call the module every forward instead."""

    def __init__(self, rotary, layer_type: str | None = None):
        self.rotary, self.layer_type = rotary, layer_type
        kind = getattr(rotary, "rope_type", "default")
        self.static = (kind.get(layer_type, "default") if isinstance(kind, dict) else kind) in _STATIC_ROPE
        self.cos = self.sin = None  # [P, 1, D]

    def _hf(self, x: torch.Tensor, positions: torch.Tensor):
        args = (x, positions[None]) if self.layer_type is None else (x, positions[None], self.layer_type)
        cos, sin = self.rotary(*args)  # [1, N, D]
        return rope_tables(cos[0], sin[0])

    def __call__(self, x: torch.Tensor, positions: torch.Tensor):
        if not self.static:
            return self._hf(x, positions)
        # on CUDA the whole context at once: reading the longest position would sync the host
        need = int(positions.max()) + 1 if not x.is_cuda else self.rotary.config.max_position_embeddings
        if self.cos is None or self.cos.shape[0] < need or self.cos.dtype != x.dtype:
            size = max(need, 2 * (0 if self.cos is None else self.cos.shape[0]), 256)
            self.cos, self.sin = self._hf(x, torch.arange(size, device=x.device))
        return self.cos[positions], self.sin[positions]


class PagedLlama:
    """Trunk forwards over paged caches k/v [L, NB, BS, Hkv, D]. Returns final-norm hidden states; the caller
    applies its head (lm_head or the RM's scalar score)."""

    def __init__(self, model, ops: PagedOps):
        reason = native_unsupported_reason(model)
        if reason:
            raise ValueError(f"the native runner cannot run {type(model).__name__}: {reason}")
        base = model.base_model
        cfg = model.config
        gemma = cfg.model_type in _GEMMA
        self.embed, self.norm, self.rotary = base.embed_tokens, _norm(base.norm, gemma), base.rotary_emb
        self.layers = [_FusedLayer(layer, gemma) for layer in base.layers]
        if cfg.model_type == "gemma3_text":  # per layer type (Gemma 2's types differ only in the window)
            for layer, kind in zip(self.layers, cfg.layer_types):
                layer.rope_type = kind
        self.ropes = {t: RopeTable(self.rotary, t) for t in {layer.rope_type for layer in self.layers}}
        self.static_rope = all(r.static for r in self.ropes.values())
        self.softcap = getattr(cfg, "attn_logit_softcapping", None) if gemma else None  # tanh cap on scores
        attn = base.layers[0].self_attn
        self.num_layers = len(self.layers)
        self.head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.scale = getattr(attn, "scaling", self.head_dim ** -0.5)
        self.ops = ops
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device

    def _qkv(self, layer: _FusedLayer, x: torch.Tensor, cos, sin):
        """x [N, H] (normed) -> q [N, Hq, D], k, v [N, Hkv, D] with RoPE applied to q and k (together)."""
        Hq, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = F.linear(x, layer.qkv_w, layer.qkv_b).view(-1, Hq + 2 * Hkv, D)  # [N, Hq + 2 Hkv, D]
        qk = qkv[:, :Hq + Hkv]
        if layer.q_norm is not None:  # Qwen3: RMSNorm over each head, before RoPE
            qk = torch.cat([layer.q_norm(qk[:, :Hq]), layer.k_norm(qk[:, Hq:])], dim=1)
        qk = rotate(qk, cos, sin)
        return qk[:, :Hq], qk[:, Hq:], qkv[:, Hq + Hkv:]

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> dict:
        """-> {rope type: (cos, signed sin) [N, 1, D]}, once per forward for the layers' RoPE types."""
        return {t: table(x, positions) for t, table in self.ropes.items()}

    @torch.no_grad()
    def forward_chunks(self, ids, positions, slots, chunks, kv) -> torch.Tensor:
        """Prefill. ids, positions, slots [N]: the concatenated chunks; chunks: PrefillChunks (per sequence:
        offset in ids, length, start position, block table). Stores every chunk's K/V. -> hidden [N, H]"""
        k_cache, v_cache = kv
        h = self.embed(ids)  # [N, H]
        ropes = self._rope(h, positions)
        for li, layer in enumerate(self.layers):
            x = layer.input_norm(h)
            q, k, v = self._qkv(layer, x, *ropes[layer.rope_type])
            # Every chunk stores before any chunk attends: a prompt admitted this step may hit blocks another
            # chunk of this step fills (Scheduler._add_chunk relies on it).
            self.ops.store_kv(k, v, k_cache[li], v_cache[li], slots)
            out = self.ops.prefill_attention(q, k_cache[li], v_cache[li], chunks, self.scale,
                                             self.softcap)  # [N, Hq, D]
            h = layer.attn_residual(h, out.flatten(1))
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
        ropes = self._rope(h, positions.repeat_interleave(K))
        new_k, new_v = [], []  # per layer [B, K, Hkv, D], unless stored
        plan = self.ops.candidate_plan(block_tables, context_lens, K, self.num_heads // self.num_kv_heads,
                                       k_cache.shape[2])
        for li, layer in enumerate(self.layers):
            x = layer.input_norm(h)
            q, k, v = self._qkv(layer, x, *ropes[layer.rope_type])
            if store_slots is None:
                new_k.append(k.view(B, K, *k.shape[1:]))
                new_v.append(v.view(B, K, *v.shape[1:]))
            out = self.ops.candidate_attention(q.view(B, K, *q.shape[1:]), k.view(B, K, *k.shape[1:]),
                                               v.view(B, K, *v.shape[1:]), k_cache[li], v_cache[li], block_tables,
                                               context_lens, self.scale, plan, self.softcap)  # [B, K, Hq, D]
            if store_slots is not None:
                self.ops.store_kv(k, v, k_cache[li], v_cache[li], store_slots)
            h = layer.attn_residual(h, out.reshape(B * K, -1))
        if store_slots is not None:
            return self.norm(h).view(B, K, -1), None, None
        return self.norm(h).view(B, K, -1), torch.stack(new_k), torch.stack(new_v)

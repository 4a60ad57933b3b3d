"""Native Llama-family trunk on paged KV caches: Llama 2/3, SmolLM2, Mistral, Qwen2 (q/k/v bias), Qwen3 (per-head
q/k RMSNorm before RoPE), Phi-3 (q/k/v and gate/up already fused in the checkpoint), Gemma 2 ((1 + w) sandwich
norms, GeLU, soft-capped attention scores; the runner caps the final logits; HF's embedding module scales) and
Gemma 3 (Gemma 2's layout with per-head q/k norms and a local or global RoPE per layer).

It runs the weights of a loaded Hugging Face model in place (its RMSNorm and rotary modules, its Linear weights),
so numerics match the HF forward and q/k/v biases come for free; attention and the caches are ours. At load,
each layer's q/k/v weights become one [(Hq + 2 Hkv) D, H] matrix and gate/up one [2 I, H] matrix, and the HF
modules' parameters become views of them (no extra memory): one matmul where HF runs three, or two. With the
Triton kernels, each residual add runs fused with the norm after it (add_rmsnorm) and RoPE with the K/V store and
the copies attention needs (rope_qkv): one launch each per use instead of five to ten."""
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
    """HF's Llama RMSNorm (float32 statistics, weight applied in the input dtype). With ops.add_rmsnorm (the
    Triton kernel) one launch per call, the residual add before it included (`add`); otherwise torch.rms_norm,
    the same values as the HF module bit for bit (tested), a quarter of its op launches."""

    def __init__(self, module, ops: PagedOps | None = None):
        self.weight = module.weight
        self.eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps")
        self.shape = (module.weight.shape[0],)
        self.kernel = ops.add_rmsnorm_kernel if ops is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, None)[0]

    def add(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (norm(residual + x), residual + x); residual None: (norm(x), x)."""
        if self.kernel is not None and x.dtype == self.weight.dtype:
            return self.kernel(x, residual, self.weight, self.eps)
        s = x if residual is None else residual + x
        if s.dtype == torch.float32 == self.weight.dtype:  # one op: the weight multiplies after the statistics
            return torch.rms_norm(s, self.shape, self.weight, self.eps), s
        return self.weight * torch.rms_norm(s.to(torch.float32), self.shape, eps=self.eps).to(s.dtype), s


class ModuleNorm:
    """A norm module run as is (Gemma's (1 + w) RMSNorm), with RMSNorm's `add`."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def add(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        s = x if residual is None else residual + x
        return self.module(s), s


def _norm(module, gemma: bool, ops: PagedOps | None):
    """The fused Llama RMSNorm, or (Gemma's (1 + w) norm) the HF module itself."""
    return ModuleNorm(module) if gemma else RMSNorm(module, ops)


class _FusedLayer:
    """One decoder layer's fused projections (views shared with the HF modules) and its norms: Llama-style
    (input norm; post-attention norm before the MLP) or Gemma 2's sandwich (norms after attention and after
    the MLP too)."""

    def __init__(self, layer, gemma: bool = False, ops: PagedOps | None = None):
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
            self.q_norm, self.k_norm = _norm(attn.q_norm, gemma, ops), _norm(attn.k_norm, gemma, ops)
        self.rope_type = None  # Gemma 3: local or global RoPE (PagedLlama sets it)
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn")
        self.act = F.silu if isinstance(act, torch.nn.SiLU) else act
        self.input_norm = _norm(layer.input_layernorm, gemma, ops)
        if gemma:
            self.attn_out_norm = layer.post_attention_layernorm
            self.mlp_in_norm = ModuleNorm(layer.pre_feedforward_layernorm)
            self.mlp_out_norm = layer.post_feedforward_layernorm
        else:
            self.attn_out_norm = self.mlp_out_norm = None
            self.mlp_in_norm = RMSNorm(layer.post_attention_layernorm, ops)

    def finish(self, attn_out: torch.Tensor, residual: torch.Tensor, next_norm) -> tuple[torch.Tensor, torch.Tensor]:
        """attn_out [N, Hq D], residual [N, H] (the layer's input) -> (next_norm(residual out), residual out):
        o_proj (Gemma: normed), the add fused with the MLP's input norm, the MLP (Gemma: normed), the add fused
        with the next layer's input norm (or the final norm)."""
        out = self.o_proj(attn_out)
        x, residual = self.mlp_in_norm.add(out if self.attn_out_norm is None else self.attn_out_norm(out), residual)
        gate, up = F.linear(x, self.gate_up_w).chunk(2, dim=-1)
        out = self.down_proj(self.act(gate) * up)
        return next_norm.add(out if self.mlp_out_norm is None else self.mlp_out_norm(out), residual)


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N, D] (HF's) -> the [N, 1, D] pair rotate() takes, made once per forward: sin's first half
    negated, so that rotate_half(x) * sin == roll(x, D/2) * signed sin (exactly: only signs move)."""
    half = sin.shape[-1] // 2
    return cos[:, None], torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D]; cos, signed_sin [N, 1, D] from rope_tables: HF's rotate-half RoPE, bit for bit."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class RopeInputs:
    """One forward's RoPE for one rope type: tables cos, signed sin [P, 1, D] and each token's row in them
    (rows [N], or None when the tables are per token). The Triton path reads the tables at the rows itself; the
    torch path gathers once per forward (`gathered`) and every layer reuses it."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor | None):
        self.cos, self.sin, self._rows, self._gathered = cos, sin, rows, None

    @property
    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = torch.arange(self.cos.shape[0], device=self.cos.device)
        return self._rows

    @property
    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> cos, signed sin [N, 1, D] of each token."""
        if self._gathered is None:
            self._gathered = (self.cos, self.sin) if self._rows is None else (self.cos[self._rows],
                                                                              self.sin[self._rows])
        return self._gathered


class RopeTable:
    """cos and signed sin of one RoPE type for positions 0..P-1, made by HF's rotary module (which computes each
    position's values elementwise, so indexing the table gives the same values) and grown on demand. Rope types
    whose values depend on the sequence length (dynamic NTK, longrope) call the module every forward instead."""

    def __init__(self, rotary, layer_type: str | None = None):
        self.rotary, self.layer_type = rotary, layer_type
        kind = getattr(rotary, "rope_type", "default")
        self.static = (kind.get(layer_type, "default") if isinstance(kind, dict) else kind) in _STATIC_ROPE
        self.cos = self.sin = None  # [P, 1, D]
        self.reserved = 0  # positions a caller said it will read (on CUDA the table covers them without a sync)

    def _hf(self, x: torch.Tensor, positions: torch.Tensor):
        args = (x, positions[None]) if self.layer_type is None else (x, positions[None], self.layer_type)
        cos, sin = self.rotary(*args)  # [1, N, D]
        return rope_tables(cos[0], sin[0])

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> RopeInputs:
        if not self.static:
            return RopeInputs(*self._hf(x, positions), None)
        # on CUDA the whole context at once (reading the longest position would sync the host), and past it what
        # a caller reserved (a bridged RM reads its own tokens, which may run past its context, as HF's RoPE does)
        need = int(positions.max()) + 1 if not x.is_cuda else max(self.rotary.config.max_position_embeddings,
                                                                  self.reserved)
        if self.cos is None or self.cos.shape[0] < need or self.cos.dtype != x.dtype:
            size = max(need, 2 * (0 if self.cos is None else self.cos.shape[0]), 256)
            self.cos, self.sin = self._hf(x, torch.arange(size, device=x.device))
        return RopeInputs(self.cos, self.sin, positions)


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
        self.embed, self.norm, self.rotary = base.embed_tokens, _norm(base.norm, gemma, ops), base.rotary_emb
        self.layers = [_FusedLayer(layer, gemma, ops) for layer in base.layers]
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

    def _qkv(self, layer: _FusedLayer, x: torch.Tensor, rope: RopeInputs, kv=None, slots=None, k_out=None,
             v_out=None):
        """x [N, H] (normed) -> q [N, Hq, D], k, v [N, Hkv, D], RoPE applied to q and k. kv (one layer's caches)
        and slots [N]: k and v are stored there too. k_out, v_out [N, Hkv, D]: where k and v go (the caller's
        stacked candidate K/V). Triton: the rotation, the store and the copies in one launch (rope_qkv)."""
        Hq, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = F.linear(x, layer.qkv_w, layer.qkv_b).view(-1, Hq + 2 * Hkv, D)  # [N, Hq + 2 Hkv, D]
        qk, v = qkv[:, :Hq + Hkv], qkv[:, Hq + Hkv:]
        if layer.q_norm is not None:  # Qwen3, Gemma 3: RMSNorm over each head, before RoPE
            qk = torch.cat([layer.q_norm(qk[:, :Hq]), layer.k_norm(qk[:, Hq:])], dim=1)
        if self.ops.use_triton:
            caches = kv if slots is not None else (None, None)
            return self.ops.rope_qkv(qk[:, :Hq], qk[:, Hq:], v, rope, *caches, slots, k_out, v_out)
        qk = rotate(qk, *rope.gathered)  # q and k at once
        q, k = qk[:, :Hq], qk[:, Hq:]
        if slots is not None:
            self.ops.store_kv(k, v, *kv, slots)
        if k_out is not None:
            k, v = k_out.copy_(k), v_out.copy_(v)
        return q, k, v

    def reserve_positions(self, n: int) -> None:
        """The next forwards read positions < n (known on the host): the RoPE tables grow to cover them."""
        for table in self.ropes.values():
            table.reserved = max(table.reserved, n)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> dict[str | None, RopeInputs]:
        """-> {rope type: its RopeInputs}, once per forward for the layers' RoPE types."""
        return {t: table(x, positions) for t, table in self.ropes.items()}

    def _layers(self, h: torch.Tensor, attend) -> torch.Tensor:
        """The trunk over h [N, H] (embedded): attend(li, layer, x) -> that layer's attention [N, Hq D] from its
        normed input x. Each residual add is fused with the norm after it. -> final-norm hidden [N, H]"""
        x, residual = self.layers[0].input_norm(h), h
        for li, layer in enumerate(self.layers):
            next_norm = self.layers[li + 1].input_norm if li + 1 < self.num_layers else self.norm
            x, residual = layer.finish(attend(li, layer, x), residual, next_norm)
        return x

    @torch.no_grad()
    def forward_chunks(self, ids, positions, slots, chunks, kv) -> torch.Tensor:
        """Prefill. ids, positions, slots [N]: the concatenated chunks; chunks: PrefillChunks (per sequence:
        offset in ids, length, start position, block table). Stores every chunk's K/V. -> hidden [N, H]"""
        k_cache, v_cache = kv
        h = self.embed(ids)  # [N, H]
        ropes = self._rope(h, positions)

        def attend(li, layer, x):
            # Every chunk stores before any chunk attends: a prompt admitted this step may hit blocks another
            # chunk of this step fills (Scheduler._add_chunk relies on it).
            q, _, _ = self._qkv(layer, x, ropes[layer.rope_type], (k_cache[li], v_cache[li]), slots)
            return self.ops.prefill_attention(q, k_cache[li], v_cache[li], chunks, self.scale,
                                              self.softcap).flatten(1)  # [N, Hq D]
        return self._layers(h, attend)

    @torch.no_grad()
    def forward_candidates(self, ids, positions, block_tables, context_lens, kv, store_slots=None, segments=None,
                           scored=None):
        """ids [B, K]: K tokens per sequence, all at positions[b] == context_lens[b], each attending to the
        sequence's cached prefix plus itself. store_slots [B] (K = 1 only): write the new K/V into the cache
        (LM decode); otherwise the new K/V come back for args_select to commit the chosen one.
        segments [B, K] (a bridged RM's ragged candidate tails, paged_ops.tree_keep): each token also sees the
        earlier tokens of its segment; positions is then per token [B, K].
        scored [N] int64, distinct (ragged k, engine/args_step.py): only these cells b * K + j of the grid are
        computed; the others are zero queries of the attention alone.
        -> hidden [B, K, H] (scored: [N, H]), new keys and values [L, B, K, Hkv, D] (None when stored)"""
        B, K = ids.shape
        k_cache, v_cache = kv
        if scored is not None:
            return self._forward_scored(ids, positions, block_tables, context_lens, kv, scored)
        h = self.embed(ids.reshape(-1))  # [B*K, H]
        ropes = self._rope(h, positions.reshape(-1) if segments is not None else positions.repeat_interleave(K))
        new_k = new_v = None
        if store_slots is None:  # each layer's rotated K/V written straight into the stacked result
            new_k = h.new_empty(self.num_layers, B * K, self.num_kv_heads, self.head_dim)
            new_v = torch.empty_like(new_k)
        plan = self.ops.candidate_plan(block_tables, context_lens, K, self.num_heads // self.num_kv_heads,
                                       k_cache.shape[2], segments)

        def attend(li, layer, x):
            rope, caches = ropes[layer.rope_type], (k_cache[li], v_cache[li])
            if store_slots is None:
                q, k, v = self._qkv(layer, x, rope, k_out=new_k[li], v_out=new_v[li])
            else:
                q, k, v = self._qkv(layer, x, rope, caches, store_slots)
            out = self.ops.candidate_attention(q.view(B, K, *q.shape[1:]), k.view(B, K, *k.shape[1:]),
                                               v.view(B, K, *v.shape[1:]), *caches, block_tables, context_lens,
                                               self.scale, plan, self.softcap, segments)
            return out.reshape(B * K, -1)  # [B*K, Hq D]
        hidden = self._layers(h, attend).view(B, K, -1)
        if store_slots is not None:
            return hidden, None, None
        shape = (self.num_layers, B, K, self.num_kv_heads, self.head_dim)
        return hidden, new_k.view(shape), new_v.view(shape)

    def _forward_scored(self, ids, positions, block_tables, context_lens, kv, scored):
        """forward_candidates on the N scored cells of the [B, K] grid: the dense layers see N tokens; each
        layer's q, k, v are placed in the grid for the shared-prefix attention and its output read back at the
        scored cells. -> hidden [N, H], new keys and values [L, B, K, Hkv, D]"""
        B, K = ids.shape
        k_cache, v_cache = kv
        h = self.embed(ids.reshape(-1)[scored])  # [N, H]
        ropes = self._rope(h, positions[scored // K])
        Hq, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        grid_q = h.new_zeros(B * K, Hq, D)  # unscored cells stay zero queries; nothing reads their output
        new_k = h.new_zeros(self.num_layers, B * K, Hkv, D)
        new_v = torch.zeros_like(new_k)
        k_n, v_n = h.new_empty(len(scored), Hkv, D), h.new_empty(len(scored), Hkv, D)
        plan = self.ops.candidate_plan(block_tables, context_lens, K, Hq // Hkv, k_cache.shape[2])

        def attend(li, layer, x):
            q, k, v = self._qkv(layer, x, ropes[layer.rope_type], k_out=k_n, v_out=v_n)  # [N, ...]
            grid_q.index_copy_(0, scored, q)
            new_k[li].index_copy_(0, scored, k)
            new_v[li].index_copy_(0, scored, v)
            out = self.ops.candidate_attention(grid_q.view(B, K, Hq, D), new_k[li].view(B, K, Hkv, D),
                                               new_v[li].view(B, K, Hkv, D), k_cache[li], v_cache[li],
                                               block_tables, context_lens, self.scale, plan, self.softcap)
            return out.reshape(B * K, -1)[scored]  # [N, Hq D]
        hidden = self._layers(h, attend)  # [N, H]
        shape = (self.num_layers, B, K, Hkv, D)
        return hidden, new_k.view(shape), new_v.view(shape)

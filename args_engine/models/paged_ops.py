"""The tensor ops of the native engine, behind one switch: Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)
or plain torch (CPU). Paged cache layout: [num_blocks, block_size, Hkv, D] per layer, slot = block * bs + offset."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops as cpp_ops
from ..decoding.common import topk_logprobs
from ..kernels.refs import args_pick


def triton_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def gather_prefix(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """cache [NB, BS, Hkv, D], block_table [MB] -> the first `length` positions [length, Hkv, D]."""
    bs = cache.shape[1]
    blocks = block_table[:(length + bs - 1) // bs].long()
    return cache[blocks].flatten(0, 1)[:length]


def tree_keep(segments: torch.Tensor) -> torch.Tensor:
    """segments [B, K]: each new token's segment (a candidate's tail of RM tokens, in order). -> keep [B, K, K]:
    token i sees token j of its row when both are in one segment and j <= i (a ragged tree over the prefix)."""
    K = segments.shape[1]
    idx = torch.arange(K, device=segments.device)
    return (segments[:, :, None] == segments[:, None, :]) & (idx[None, None, :] <= idx[None, :, None])


def candidate_plan_torch(block_tables, context_lens, K: int, G: int, block_size: int, segments=None):
    """What every layer's candidate attention shares in one forward: the prefix's blocks [B, nblk] (int64), its
    length T, and the mask [B, 1, K*G, T+K] that keeps each query to its valid prefix and its own key (or, with
    segments [B, K], to the earlier tokens of its own segment: tree_keep)."""
    B = block_tables.shape[0]
    T = int(context_lens.max()) if B else 0
    blocks = block_tables[:, :(T + block_size - 1) // block_size].long()  # [B, nblk]
    prefix = torch.arange(T, device=block_tables.device)[None, :] < context_lens[:, None]  # [B, T]
    if segments is None:
        own = torch.eye(K, dtype=torch.bool, device=block_tables.device).expand(B, K, K)  # [B, K, K]
    else:
        own = tree_keep(segments)
    own = own.repeat_interleave(G, dim=1)  # [B, K*G, K]
    mask = torch.cat([prefix[:, None, :].expand(B, K * G, T), own], dim=2)  # [B, K*G, T+K]
    return blocks, T, mask[:, None]


def attention(q, k, v, keep, scale: float, softcap: float | None = None) -> torch.Tensor:
    """q [..., M, D], k, v [..., T, D], keep [..., M, T] bool -> [..., M, D]. SDPA (its fused CPU kernel), or with
    a soft cap (Gemma 2: scores -> cap * tanh(scores / cap)) the eager formula HF's Gemma 2 runs (softmax in
    float32, as HF does)."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def candidate_attention_torch(q, k_new, v_new, key_cache, value_cache, block_tables, context_lens, scale, plan=None,
                              softcap: float | None = None, segments=None):
    """q [B, K, Hq, D]; k_new, v_new [B, K, Hkv, D]: each query attends to its sequence's paged prefix
    (context_lens[b] positions) plus its own new key only (segments [B, K]: plus the earlier new keys of its
    segment). plan: candidate_plan_torch's (made here if None). softcap: Gemma 2's score cap. -> [B, K, Hq, D]"""
    B, K, Hq, D = q.shape
    Hkv = k_new.shape[2]
    G = Hq // Hkv
    blocks, T, mask = plan or candidate_plan_torch(block_tables, context_lens, K, G, key_cache.shape[1], segments)
    # One SDPA over [prefix | the K candidates' own keys]: the mask keeps each query to the valid prefix and itself.
    keys = torch.cat([key_cache[blocks].flatten(1, 2)[:, :T], k_new], dim=1).transpose(1, 2)  # [B, Hkv, T+K, D]
    values = torch.cat([value_cache[blocks].flatten(1, 2)[:, :T], v_new], dim=1).transpose(1, 2)
    qh = q.view(B, K, Hkv, G, D).permute(0, 2, 1, 3, 4).reshape(B, Hkv, K * G, D)  # [B, Hkv, K*G, D]
    out = attention(qh, keys, values, mask, scale, softcap)  # [B, Hkv, KG, D]
    return out.view(B, Hkv, K, G, D).permute(0, 2, 1, 3, 4).reshape(B, K, Hq, D)


def chunk_attention(q, key_cache, value_cache, block_table, start: int, scale: float,
                    softcap: float | None = None) -> torch.Tensor:
    """Prefill of one chunk: q [C, Hq, D] at positions start..start+C-1, whose K/V are already stored; attends
    causally to positions 0..start+C-1 of the paged cache. -> [C, Hq, D]"""
    C, Hq, D = q.shape
    keys = gather_prefix(key_cache, block_table, start + C)  # [T, Hkv, D]
    values = gather_prefix(value_cache, block_table, start + C)
    Hkv = keys.shape[1]
    keep = torch.arange(start + C, device=q.device)[None, :] <= torch.arange(start, start + C, device=q.device)[:, None]
    # GQA as shared kv heads, 4D: keeps SDPA on its fused CPU kernel (3D inputs and enable_gqa fall back to math)
    G = Hq // Hkv
    qg = q.view(C, Hkv, G, D).permute(1, 2, 0, 3).reshape(Hkv, G * C, D)
    out = attention(qg[None], keys.transpose(0, 1)[None], values.transpose(0, 1)[None], keep.repeat(G, 1), scale,
                    softcap)  # [1, Hkv, G*C, D]
    return out.view(Hkv, G, C, D).permute(2, 0, 1, 3).reshape(C, Hq, D)


@dataclass
class PrefillChunks:
    """A step's prefill chunks: spans (offset in the step's tokens, length, start position) per sequence on the
    host, and the same as device tensors for the kernel: tables [P, MB] int32, cu_seqlens [P + 1], starts [P]."""

    spans: list[tuple[int, int, int]]
    tables: torch.Tensor
    cu_seqlens: torch.Tensor
    starts: torch.Tensor

    @property
    def max_len(self) -> int:
        return max(n for _, n, _ in self.spans)


class PagedOps:
    """use_triton: the Triton kernels; otherwise torch and the C++ CPU ops."""

    def __init__(self, use_triton: bool):
        self.use_triton = use_triton
        self.add_rmsnorm_kernel = None  # RMSNorm calls it directly: (x, residual, weight, eps) -> (normed, sum)
        if use_triton:
            from ..kernels import (add_rmsnorm, args_select, candidate_attention, prefill_attention, rope_qkv,
                                   store_kv, topk_logprobs)
            self._k = dict(args_select=args_select.args_select, store_kv=store_kv.store_kv,
                           candidate_attention=candidate_attention.candidate_attention,
                           prefill_attention=prefill_attention.prefill_attention,
                           topk_logprobs=topk_logprobs.topk_logprobs, rope_qkv=rope_qkv.rope_qkv)
            self.add_rmsnorm_kernel = add_rmsnorm.add_rmsnorm

    def rope_qkv(self, q, k, v, rope, key_cache=None, value_cache=None, slots=None, k_out=None, v_out=None):
        """Triton only (the torch path is PagedLlama._qkv's): RoPE on q and k from rope (a RopeInputs), k and v
        stored at slots when given, into k_out / v_out when given. -> contiguous q, k, v."""
        return self._k["rope_qkv"](q, k, v, rope.cos, rope.sin, rope.rows, key_cache, value_cache, slots, k_out,
                                   v_out)

    @staticmethod
    def copy_blocks(key_cache: torch.Tensor, value_cache: torch.Tensor, pairs: torch.Tensor) -> None:
        """Copy-on-write of shared prefix blocks: pairs [M, 2] (src, dst) of caches [L, NB, BS, Hkv, D], every
        layer: the C++/CUDA cache op where the extension has it for this device, else torch indexing."""
        if cpp_ops.has_copy_blocks(pairs.device):
            for layer in range(key_cache.shape[0]):
                cpp_ops.copy_blocks(key_cache[layer], value_cache[layer], pairs)
        else:
            src, dst = pairs[:, 0], pairs[:, 1]
            key_cache[:, dst], value_cache[:, dst] = key_cache[:, src], value_cache[:, src]

    def store_kv(self, key, value, key_cache, value_cache, slots) -> None:
        """key, value [N, Hkv, D] into slots [N] of one layer's caches."""
        if self.use_triton:
            self._k["store_kv"](key, value, key_cache, value_cache, slots)
        elif key_cache.is_cuda:
            cpp_ops.store_kv(key.contiguous(), value.contiguous(), key_cache, value_cache, slots)
        else:  # the engine never passes slot -1, so no masking (store_kv_ref's) on this per-layer path
            key_cache.view(-1, *key_cache.shape[2:])[slots] = key
            value_cache.view(-1, *value_cache.shape[2:])[slots] = value

    def prefill_attention(self, q, key_cache, value_cache, chunks: PrefillChunks, scale: float,
                          softcap: float | None = None) -> torch.Tensor:
        """q [N, Hq, D] of every chunk, their K/V already stored -> causal attention over each sequence [N, Hq, D]:
        one kernel launch for all chunks, or chunk_attention per chunk in torch."""
        if self.use_triton:
            return self._k["prefill_attention"](q, key_cache, value_cache, chunks.tables, chunks.cu_seqlens,
                                                chunks.starts, chunks.max_len, scale, softcap)
        out = torch.empty_like(q)
        for (off, n, start), table in zip(chunks.spans, chunks.tables):
            out[off:off + n] = chunk_attention(q[off:off + n], key_cache, value_cache, table, start, scale, softcap)
        return out

    def candidate_plan(self, block_tables, context_lens, K: int, G: int, block_size: int, segments=None):
        """Per-forward metadata the torch attention shares across layers (None for the kernel)."""
        if self.use_triton:
            return None
        return candidate_plan_torch(block_tables, context_lens, K, G, block_size, segments)

    def candidate_attention(self, q, k_new, v_new, key_cache, value_cache, block_tables, context_lens, scale,
                            plan=None, softcap: float | None = None, segments=None):
        """q [B, K, Hq, D], k_new, v_new [B, K, Hkv, D] -> [B, K, Hq, D]: each query over its row's paged prefix
        and its own key; segments [B, K] (int32, a bridged RM's ragged candidate tails): and the earlier keys of
        its segment."""
        if self.use_triton:
            return self._k["candidate_attention"](q.contiguous(), k_new.contiguous(), v_new.contiguous(), key_cache,
                                                  value_cache, block_tables, context_lens, scale, softcap=softcap,
                                                  segments=segments)
        return candidate_attention_torch(q.contiguous(), k_new.contiguous(), v_new.contiguous(), key_cache,
                                         value_cache, block_tables, context_lens, scale, plan, softcap, segments)

    def topk_logprobs(self, logits: torch.Tensor, k: int):
        """logits [B, V] -> (logp [B, k], ids [B, k]), highest first."""
        if self.use_triton and k <= 64:  # the kernel's running top-k holds at most 64
            return self._k["topk_logprobs"](logits, k)
        return topk_logprobs(logits, k)

    def args_select(self, logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value, key_cache,
                    value_cache, slots):
        """Score, choose, and commit the chosen candidate's K/V (all layers) into each row's RM slot."""
        if self.use_triton:
            return self._k["args_select"](logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value,
                                          key_cache, value_cache, slots)
        # torch: choose as the kernel does; the engine never passes slot -1 (padding rows write a spare block),
        # so the commit needs no mask (args_select_ref's boolean indexing costs several ops per call)
        choice, tokens, chosen = args_pick(logp, rewards, cand_ids, k, w, temperature, gumbel)  # [B] each
        rows = torch.arange(len(choice), device=choice.device)
        for cand, cache in ((cand_key, key_cache), (cand_value, value_cache)):
            cache.view(cache.shape[0], -1, *cache.shape[3:])[:, slots] = cand[:, rows, choice]
        return choice, tokens, chosen

"""add_rmsnorm: the residual add and the RMSNorm after it in one pass (vLLM's fused_add_rms_norm, Liger's
rms_norm), with the numerics of Hugging Face's Llama RMSNorm.

Per row: s = residual + x, rounded to the input dtype (HF adds in the model dtype); statistics in float32 on the
rounded sum (HF upcasts to float32); y = (s * rsqrt(mean(s^2) + eps)) rounded to the input dtype, then weight * y
in that dtype. A program takes one row at LLM widths (several when H is small); each row is read (x and the
residual) once and written (the normed row and the new residual) once: the torch path launches an add, two
casts, rms_norm and a multiply, each a full pass over [N, H].

Precision: the mean and rstd = 1 / sqrt(mean + eps) use IEEE-rounded division and square root (div_rn,
sqrt_rn; Triton's defaults on CUDA are approximate, 1-3 ulp), so the result equals torch's CPU path up to the
order of the float32 sum of squares (a float32 rounding, whatever the model dtype, as HF's float32 statistics
are). torch's own CUDA rsqrt is approximate (up to 2 ulp): against torch on a GPU, rstd may differ by that much
more, which moves y by at most a last bit before its cast to the model dtype."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensors_on_one_device


@triton.jit
def _add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, eps, R, M, sx_n, sx_m, sr_n, sr_m, H,
                        HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # ROWS rows per program (small H: several)
    n, m = r // M, r % M  # rows of [N, M, H] with arbitrary row strides (per-head norms read strided heads)
    e = tl.arange(0, BLOCK)
    ok = (r < R)[:, None] & (e < H)[None, :]
    x = tl.load(x_ptr + (n * sx_n + m * sx_m)[:, None] + e[None, :], mask=ok, other=0.0)  # [ROWS, BLOCK]
    if HAS_RES:
        x = x + tl.load(res_ptr + (n * sr_n + m * sr_m)[:, None] + e[None, :], mask=ok, other=0.0)  # model dtype
        tl.store(sum_ptr + r[:, None] * H + e[None, :], x, mask=ok)
    x32 = x.to(tl.float32)
    ms = tl.div_rn(tl.sum(x32 * x32, axis=1), H + 0.0)  # [ROWS]; IEEE-rounded, as torch on CPU
    rstd = tl.div_rn(1.0, tl.sqrt_rn(ms + eps))
    y = (x32 * rstd[:, None]).to(x.dtype)
    w = tl.load(w_ptr + e, mask=e < H, other=0.0)
    tl.store(out_ptr + r[:, None] * H + e[None, :], w[None, :] * y, mask=ok)


def _rows(t: torch.Tensor) -> tuple[int, int, int, int]:
    """[N, H] or [N, M, H] with a contiguous last dim -> (N, M, stride n, stride m)."""
    if t.dim() == 2:
        return t.shape[0], 1, t.stride(0), 0
    return t.shape[0], t.shape[1], t.stride(0), t.stride(1)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H] or [N, M, H] (rows may be strided, the last dim contiguous); residual like x or None; weight [H]
    in x's dtype. -> (weight * rmsnorm(residual + x) [contiguous, x's shape], residual + x (x itself when
    residual is None))."""
    named = dict(x=x, weight=weight) if residual is None else dict(x=x, residual=residual, weight=weight)
    check_tensors_on_one_device("x", **named)
    if x.dim() not in (2, 3) or x.stride(-1) != 1:
        raise ValueError(f"x must be [N, H] or [N, M, H] with a contiguous last dim, got {tuple(x.shape)} "
                         f"strides {x.stride()}")
    H = x.shape[-1]
    if residual is not None:
        if residual.shape != x.shape or residual.stride(-1) != 1:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)} and a contiguous last dim, got "
                             f"{tuple(residual.shape)} strides {residual.stride()}")
        if residual.dtype != x.dtype:
            raise ValueError(f"residual dtype {residual.dtype} != x dtype {x.dtype}")
    if tuple(weight.shape) != (H,) or weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous [{H}] in {x.dtype}, got {weight.dtype} {tuple(weight.shape)}")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = x if residual is None else torch.empty_like(out)
    N, M, sx_n, sx_m = _rows(x)
    _, _, sr_n, sr_m = _rows(x if residual is None else residual)
    if N * M and H:
        BLOCK = triton.next_power_of_2(H)
        ROWS = max(1, min(16, 2048 // BLOCK))  # a program covers >= 2048 elements: one row at LLM widths
        _add_rmsnorm_kernel[(triton.cdiv(N * M, ROWS),)](x, x if residual is None else residual, weight, out, summed,
                                                        eps, N * M, M, sx_n, sx_m, sr_n, sr_m, H,
                                                        HAS_RES=residual is not None, ROWS=ROWS, BLOCK=BLOCK,
                                                        num_warps=4 if BLOCK <= 4096 else 8)
    return out, summed


def add_rmsnorm_ref(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's contract in torch (HF's LlamaRMSNorm after an add in the model dtype)."""
    s = x if residual is None else residual + x
    s32 = s.to(torch.float32)
    y = s32 * torch.rsqrt(s32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(s.dtype), s

"""Logit controls (repetition, presence and frequency penalties, no-repeat n-grams, logit bias, min-p, top-p),
applied to the LM's next-token logits before the k candidates are taken. Every decoder goes through
`apply_controls`, so all paths control alike; each row is processed from its own tokens and settings only
(batch-invariant).

Two halves, so the native step needs no host round trip: `control_arrays` (host) turns each controlled row's
settings into arrays that travel in the step's one host-to-device copy, and `apply_controls` (device) applies them
to all controlled rows at once with gathers and scatters, never reading anything back. The controls that read
the tokens so far (repetition, presence / frequency, n-grams) take them from a [C, L] history: the reference
decoders pack it on the host each step; the native engine keeps it on the device, appended by the step itself
(engine/control_history.py).

Semantics follow the libraries users know: logit bias added, then repetition_penalty and no_repeat_ngram_size
as Hugging Face's processors (over prompt + response), presence and frequency penalties as OpenAI's (over the
response). min_p and top_p then drop unlikely tokens (logit -inf): a step may have fewer than k candidates,
and a dropped candidate can never be chosen (its log p is -inf). Among tokens of equal probability top_p keeps
the lower ids (a stable sort), as the candidates' tie rule does."""
from __future__ import annotations

import numpy as np
import torch

from ..params import ARGSParams

_FLOAT_FIELDS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "min_p", "top_p")


def control_arrays(params: list[ARGSParams], token_ids: list[list[int]], num_prompt: list[int],
                   vocab_size: int, float_dtype=np.float64, history: bool = True) -> dict[str, np.ndarray]:
    """Host arrays of the rows with controls (none: {}). token_ids[b]: row b's prompt + response so far, the first
    num_prompt[b] being the prompt. Padding token ids are `vocab_size` (a column apply_controls adds and drops)
    but for the logit bias (token 0 with a bias of 0.0).
    float_dtype: of the settings, best the dtype apply_controls computes in (float32 unless the logits are
    float64), so the device casts nothing.
      ctl_rows [C] the controlled rows; ctl_<field> [C] each setting that some row uses (min_p and top_p
      together); ctl_filter [F] those (of the C) with min_p or top_p; ctl_bias_ids, ctl_bias [C, NB] logit bias;
      the controls that read the tokens, each as the rows (of the C) it applies to: ctl_rep (repetition, over
      prompt + response), ctl_pen (presence / frequency, over the response), ctl_ng<n> (no-repeat n-grams of
      size n); with them ctl_len [C] and ctl_prompt [C] (tokens so far, of them the prompt's) and, when
      `history` (the reference decoders; the native engine keeps the tokens on the device instead),
      ctl_hist [C, L] every row's tokens."""
    rows = [b for b, p in enumerate(params) if p.has_logit_controls]
    if not rows:
        return {}
    ps = [params[b] for b in rows]
    a = {"ctl_rows": np.array(rows, dtype=np.int64)}
    filtered = [i for i, p in enumerate(ps) if p.min_p > 0.0 or p.top_p < 1.0]
    # a setting travels only when a row uses its control (an unused one would change no logit: no copy, no op)
    used = {"repetition_penalty": any(p.repetition_penalty != 1.0 for p in ps),
            "presence_penalty": any(p.presence_penalty for p in ps),
            "frequency_penalty": any(p.frequency_penalty for p in ps), "min_p": bool(filtered), "top_p": bool(filtered)}
    for name in _FLOAT_FIELDS:
        if used[name]:
            a[f"ctl_{name}"] = np.array([getattr(p, name) for p in ps], dtype=float_dtype)
    if filtered:  # only these rows pay for the softmax and the sort
        a["ctl_filter"] = np.array(filtered, dtype=np.int64)
        # top_p off is +inf, decided here in double precision: a top_p just below 1 rounds to 1.0 in float32, and
        # it must still drop the tokens whose likelier mass reaches 1.0
        a["ctl_top_p"][[p.top_p >= 1.0 for p in ps]] = np.inf
    if any(p.logit_bias for p in ps):
        # padded with token 0 and a bias of 0.0: adding it changes no logit, so no padding column is needed
        a["ctl_bias_ids"] = _padded([list(p.logit_bias or ()) for p in ps], 0)
        a["ctl_bias"] = _padded([list((p.logit_bias or {}).values()) for p in ps], 0.0, float_dtype)
    uses = {"ctl_rep": [i for i, p in enumerate(ps) if p.repetition_penalty != 1.0],
            "ctl_pen": [i for i, p in enumerate(ps) if p.presence_penalty or p.frequency_penalty]}
    for n in sorted({p.no_repeat_ngram_size for p in ps if p.no_repeat_ngram_size > 0}):
        uses[f"ctl_ng{n}"] = [i for i, p in enumerate(ps) if p.no_repeat_ngram_size == n]
    uses = {name: r for name, r in uses.items() if r}
    if uses:
        a.update({name: np.array(r, dtype=np.int64) for name, r in uses.items()})
        a["ctl_len"] = np.array([len(token_ids[b]) for b in rows], dtype=np.int64)
        a["ctl_prompt"] = np.array([num_prompt[b] for b in rows], dtype=np.int64)
        if history:
            a["ctl_hist"] = _padded([token_ids[b] for b in rows], vocab_size)
    return a


def reads_tokens(t: dict) -> bool:
    """Does a control in these arrays read the rows' tokens (repetition, presence / frequency, n-grams)?"""
    return "ctl_len" in t


def _padded(lists: list[list], fill, dtype=np.int64) -> np.ndarray:
    out = np.full((len(lists), max(1, max(map(len, lists)))), fill, dtype=dtype)
    for i, x in enumerate(lists):
        out[i, :len(x)] = x
    return out


def apply_controls(logits: torch.Tensor, t: dict[str, torch.Tensor], hist: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """logits [B, V] and control_arrays' tensors (on the logits' device) -> controlled logits [B, V]: a new tensor
    when any row has controls (the input is never modified). hist [C, L]: the controlled rows' tokens, padded
    with V past each row's length (default: t["ctl_hist"]). No host synchronization. The arithmetic runs in
    float32 (float64 for float64 logits), as Hugging Face's processors see the scores, and the result is cast
    back to the logits' dtype."""
    if "ctl_rows" not in t:
        return logits
    rows = t["ctl_rows"]  # ascending, distinct: as many as the logits' rows means every row, in order
    every = len(rows) == len(logits)
    hist = t.get("ctl_hist") if hist is None else hist
    acc = torch.promote_types(logits.dtype, torch.float32)
    x = (logits if every else logits.index_select(0, rows)).to(acc)  # [C, V]
    C, V = x.shape
    pad = x.new_zeros(C, 1) if any(k.startswith("ctl_ng") for k in t) else None  # where padding ids land

    def setting(name, r):  # [R, 1] for the rows r (of the C)
        v = t[f"ctl_{name}"].to(acc)
        return (v if r is None else v.index_select(0, r))[:, None]

    def rows_of(name):  # the rows (of the C) a control applies to; None: all of them (no gather, no scatter)
        r = t[name]
        return None if len(r) == C else r

    def take(z, r):
        return z if r is None else z.index_select(0, r)

    def put(z, r, zr):
        return zr if r is None else z.index_copy(0, r, zr)
    if "ctl_bias_ids" in t:
        x = x.scatter_add(1, t["ctl_bias_ids"], t["ctl_bias"].to(acc))
    if "ctl_rep" in t:  # every token seen, prompt included
        r = rows_of("ctl_rep")
        h = take(hist, r)  # [R, L]
        seen = torch.zeros(len(h), V + 1, dtype=torch.bool, device=x.device).scatter_(1, h, True)[:, :V]  # [R, V]
        xr, rep = take(x, r), setting("repetition_penalty", r)
        x = put(x, r, torch.where(seen, torch.where(xr > 0, xr / rep, xr * rep), xr))
    if "ctl_pen" in t:  # the response's tokens only
        r = rows_of("ctl_pen")
        h = take(hist, r)  # [R, L]
        at = torch.arange(h.shape[1], device=h.device)
        response = (at >= take(t["ctl_prompt"], r)[:, None]).to(acc)  # [R, L]: 1 past the prompt
        counts = torch.zeros(len(h), V + 1, dtype=acc, device=x.device).scatter_add_(1, h, response)[:, :V]
        penalty = setting("frequency_penalty", r) * counts if "ctl_frequency_penalty" in t else None
        if "ctl_presence_penalty" in t:  # a term not sent is zero for every row: leaving it out changes no bit
            presence = setting("presence_penalty", r)
            penalty = presence if penalty is None else penalty + presence
        xr = take(x, r)  # a token never seen keeps its logit exactly
        x = put(x, r, torch.where(counts > 0, xr - penalty, xr))
    for name in sorted(k for k in t if k.startswith("ctl_ng")):
        r = rows_of(name)
        h = take(hist, r)
        bans = ngram_bans(h, take(t["ctl_len"], r), int(name[6:]), V)  # [R, M]
        x = put(x, r, torch.cat([take(x, r), pad[:len(h)]], 1).scatter(1, bans, float("-inf"))[:, :V])
    if "ctl_filter" in t:
        f = rows_of("ctl_filter")
        kept = take(x, f)  # [F, V]
        drop = dropped_by_min_p_top_p(kept, take(t["ctl_min_p"], f), take(t["ctl_top_p"], f))
        x = put(x, f, kept.masked_fill(drop, float("-inf")))
    x = x.to(logits.dtype)
    return x if every else logits.index_copy(0, rows, x)


def ngram_bans(hist: torch.Tensor, lens: torch.Tensor, n: int, pad_id: int) -> torch.Tensor:
    """hist [R, L] tokens (pad_id past each row's length lens [R]) -> [R, M] the tokens no_repeat_ngram_size n bans
    (pad_id elsewhere): those that followed an earlier occurrence of the row's last n - 1 tokens (Hugging Face's
    semantics; banned_ngram_tokens is the host oracle). On the device, no host read. No length mask is needed:
    a window that reaches past a row's length holds pad_id, so it never equals the row's last n - 1 tokens (real
    ids), and the window that is those tokens is followed by pad_id, whose ban lands in the padding column."""
    if n == 1:
        return hist  # every token seen
    R, L = hist.shape
    if L < n:
        return hist.new_full((R, 1), pad_id)
    windows = hist.unfold(1, n - 1, 1)  # [R, L - n + 2, n - 1]: window s is followed by the token at s + n - 1
    start = (lens - (n - 1)).clamp_min(0)  # [R]: where each row's last n - 1 tokens begin
    last = windows.gather(1, start[:, None, None].expand(R, 1, n - 1))  # [R, 1, n - 1]
    differs = (windows[:, :L - n + 1] != last).any(-1)  # [R, L - n + 1]
    return hist[:, n - 1:].masked_fill(differs, pad_id)


def apply_logit_controls(logits: torch.Tensor, params: list[ARGSParams], token_ids: list[list[int]],
                         num_prompt: list[int]) -> torch.Tensor:
    """The decoders' entry (reference, naive, bridge, HF processors): control_arrays for these rows, moved to the
    logits' device, then apply_controls. logits [B, V] -> [B, V]."""
    arrays = control_arrays(params, token_ids, num_prompt, logits.shape[-1])
    return apply_controls(logits, {n: torch.from_numpy(a).to(logits.device) for n, a in arrays.items()})


def banned_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram already in `ids` (Hugging Face's no_repeat_ngram_size): those that
    followed an earlier occurrence of the last n - 1 tokens. The host oracle of ngram_bans."""
    if len(ids) + 1 < n or n < 1:
        return []
    t = torch.tensor(ids)
    if n == 1:
        return t.unique().tolist()
    starts = t.unfold(0, n - 1, 1)[:len(ids) - n + 1]  # [L - n + 1, n - 1]: the windows a token follows
    follows = (starts == t[len(ids) - n + 1:]).all(1)  # [L - n + 1]
    return t[n - 1:][follows].unique().tolist()


def dropped_by_min_p_top_p(x: torch.Tensor, min_p, top_p) -> torch.Tensor:
    """x [..., V] logits, min_p and top_p floats or [...] tensors -> [..., V] bool: the tokens min_p and top_p
    drop (min_p 0: none; top_p: a float >= 1 or a tensor's +inf: none). The likeliest token is always kept."""
    if not isinstance(top_p, torch.Tensor) and top_p >= 1.0:
        top_p = float("inf")
    probs = torch.softmax(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)  # [..., V]
    min_p, top_p = (torch.as_tensor(v, dtype=probs.dtype, device=probs.device)[..., None] for v in (min_p, top_p))
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    drop = probs < min_p * sorted_p[..., :1]  # relative to the likeliest token's probability
    before = sorted_p.cumsum(-1) - sorted_p  # probability of the likelier tokens
    return drop | torch.zeros_like(drop).scatter(-1, order, before >= top_p)

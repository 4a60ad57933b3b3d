"""Prefix-aware reward heads: a head that can judge a reply while it is being written.

ARGS asks the RM about a half-written reply plus one candidate token at every step, but a head trained
Bradley-Terry on whole replies never saw a prefix. One trunk forward of a dialogue already yields the hidden
state after every reply token (causal attention: position P + j - 1 is exactly what the RM reads once decoding
has produced j reply tokens), so the head trains on prefixes for free:

- whole pairs: chosen vs rejected reply, read at the last token (today's objective);
- prefix pairs: chosen[:L] vs rejected[:L] at matched reply lengths L (length cannot be the signal),
  a few L per pair spread over the reply (FUDGE-style classifiers, controlled decoding's prefix values);
- optionally a value-style term pulling each prefix's score toward its whole reply's score.

States are cached on disk in shards (float16), so an interrupted extraction resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import render_prompt
from ..progress import progress_bar
from .data import PreferencePair, split_last_reply
from .train import right_padded, train_linear_head

FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # where accuracy is reported; 1.0 = whole replies (unmatched lengths)
SHARD = 128  # dialogues per cache file


def dialogue_ids(tokenizer, pairs: list[PreferencePair], max_len: int) -> list[tuple[list[int], int]]:
    """(token ids, reply length in tokens) per dialogue, chosen and rejected interleaved; rendered as decoding
    renders them (chat.render_dialogue) and cut to the last `max_len` tokens (the reward reads the end)."""
    out = []
    for p in pairs:
        for text in (p.chosen, p.rejected):
            messages, reply = split_last_reply(text)
            prompt = render_prompt(tokenizer, messages)
            reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
            ids = (prompt + reply_ids)[-max_len:]
            out.append((ids, min(len(reply_ids), len(ids))))
    return out


@torch.no_grad()
def _shard_states(trunk, dialogues: list[tuple[list[int], int]], batch_size: int, bar) -> list[torch.Tensor]:
    """Reply-position states of one shard: [max(R, 1), H] float16 per dialogue (R = 0: the prompt's last)."""
    order = sorted(range(len(dialogues)), key=lambda i: len(dialogues[i][0]))
    states = [None] * len(dialogues)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        lens = [len(dialogues[i][0]) for i in idx]
        ids, mask = right_padded([dialogues[i][0] for i in idx])  # [b, T]
        hidden = trunk(input_ids=ids, attention_mask=mask).last_hidden_state  # [b, T, H]
        for row, i in enumerate(idx):
            r = max(dialogues[i][1], 1)
            states[i] = hidden[row, lens[row] - r:lens[row]].to(torch.float16).clone()  # [r, H]
        bar.update(len(idx))
    return states


def reply_states(trunk, dialogues: list[tuple[list[int], int]], cache: Path | None, batch_size: int = 8,
                 desc: str = "reply states") -> list[torch.Tensor]:
    """Trunk hidden state after every reply token of each dialogue: N x [max(R, 1), H] (float16); the last row
    is the whole reply's. With `cache` (a folder), each shard of SHARD dialogues is saved when done and loaded
    instead of recomputed, so a run that stops resumes."""
    shards = [dialogues[s:s + SHARD] for s in range(0, len(dialogues), SHARD)]
    paths = [cache / f"shard-{i:05d}.pt" if cache else None for i in range(len(shards))]
    done = sum(len(sh) for sh, p in zip(shards, paths) if p is not None and p.exists())
    out = []
    with progress_bar(total=len(dialogues), initial=done, desc=desc, unit="dialogue") as bar:
        for shard, path in zip(shards, paths):
            if path is not None and path.exists():
                out += torch.load(path)
                continue
            states = _shard_states(trunk, shard, batch_size, bar)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(states, tmp)
                tmp.replace(path)  # whole shards only: a killed run never leaves half a file under the name
            out += states
    return out


def cache_folder(root: Path, lm_dir: str, data_sha: str, split: str, n_pairs: int, max_len: int) -> Path:
    key = json.dumps([str(lm_dir), data_sha, split, n_pairs, max_len, SHARD])
    return root / f"rm-reply-states-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def matched_length(fraction: float, shorter: int) -> int:
    """Reply tokens compared at `fraction` of a pair whose shorter reply has `shorter` tokens (>= 1)."""
    return max(1, math.ceil(fraction * shorter))


@dataclass
class PrefixData:
    """Features for fitting and scoring a linear head, from the reply states of N pairs."""
    whole: tuple[torch.Tensor, torch.Tensor]        # chosen, rejected [N, H]: last token of each reply
    prefix: tuple[torch.Tensor, torch.Tensor]       # chosen, rejected [M, H]: matched-length prefixes
    prefix_pair: torch.Tensor                       # [M] which pair each prefix row came from
    value: torch.Tensor                             # [V, H] prefix state - its whole reply's state
    value_pair: torch.Tensor                        # [V]
    at_fraction: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # f -> (chosen, rejected, pair)


def pair_features(states: list[torch.Tensor], positions: int = 8) -> PrefixData:
    """Whole-reply, matched-prefix and value rows from interleaved (chosen, rejected) reply states.
    `positions`: matched lengths per pair, evenly spread over the shorter reply (all of them if it is shorter)."""
    n = len(states) // 2
    whole_c = torch.stack([states[2 * i][-1] for i in range(n)]).double()  # [N, H]
    whole_r = torch.stack([states[2 * i + 1][-1] for i in range(n)]).double()
    pc, pr, pp, vals, vp = [], [], [], [], []
    at = {f: ([], [], []) for f in FRACTIONS if f < 1.0}
    for i in range(n):
        c, r = states[2 * i], states[2 * i + 1]
        shorter = min(len(c), len(r))
        lengths = sorted({matched_length((q + 1) / positions, shorter) for q in range(positions)})
        for L in lengths:
            pc.append(c[L - 1]), pr.append(r[L - 1]), pp.append(i)
        for s in (c, r):  # value rows: the same lengths, each reply against its own end
            for L in lengths:
                if L < len(s):
                    vals.append(s[L - 1].double() - s[-1].double()), vp.append(i)
        for f, (fc, fr, fi) in at.items():
            L = matched_length(f, shorter)
            fc.append(c[L - 1]), fr.append(r[L - 1]), fi.append(i)
    fractions = {f: (torch.stack(fc).double(), torch.stack(fr).double(), torch.tensor(fi)) for f, (fc, fr, fi)
                 in at.items()}
    fractions[1.0] = (whole_c, whole_r, torch.arange(n))
    H = whole_c.shape[1]
    value = torch.stack(vals) if vals else torch.zeros(0, H, dtype=torch.float64)
    return PrefixData((whole_c, whole_r), (torch.stack(pc).double(), torch.stack(pr).double()), torch.tensor(pp),
                      value, torch.tensor(vp, dtype=torch.long), fractions)


def subset(data: PrefixData, keep: torch.Tensor) -> PrefixData:
    """The rows of the pairs in `keep` ([N] bool)."""
    def rows(pair):
        return keep[pair]
    p, v = rows(data.prefix_pair), rows(data.value_pair)
    index = torch.cumsum(keep.long(), 0) - 1  # old pair index -> new
    return PrefixData((data.whole[0][keep], data.whole[1][keep]),
                      (data.prefix[0][p], data.prefix[1][p]), index[data.prefix_pair[p]],
                      data.value[v], index[data.value_pair[v]],
                      {f: (c[rows(i)], r[rows(i)], index[i[rows(i)]]) for f, (c, r, i) in data.at_fraction.items()})


def fit_head(data: PrefixData, l2: float, prefix_weight: float = 0.0, value_weight: float = 0.0,
             steps: int = 200) -> torch.Tensor:
    """w [H] minimising  BT(whole) + prefix_weight * BT(prefixes) + value_weight * mean((r(prefix) - r(whole))^2)
    + l2 * |w_std|^2 (reward.train.train_linear_head; with both weights 0 it is today's fit)."""
    return train_linear_head(*data.whole, l2=l2, steps=steps, more_pairs=data.prefix, pairs_weight=prefix_weight,
                             gaps=data.value, gaps_weight=value_weight)


def accuracy_by_fraction(data: PrefixData, w: torch.Tensor) -> dict[float, float]:
    """Pairwise accuracy (chosen scored above rejected) at each reply fraction, matched lengths below 1.0."""
    w = w.double()
    return {f: float(((c @ w) > (r @ w)).double().mean()) for f, (c, r, _) in data.at_fraction.items()}


def cv_table(data: PrefixData, grid: list[dict], folds: int = 5, seed: int = 0) -> list[dict]:
    """k-fold cross-validation over pairs (training pairs only). Each grid point is a dict of fit_head's keyword
    arguments. -> one row per point: the point, its accuracy by fraction (`cv_accuracy`) and their mean."""
    n = len(data.whole[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    table = []
    for point in progress_bar(grid, desc="cross-validation", unit="setting"):
        per_fold = []
        for f in range(folds):
            held = torch.zeros(n, dtype=torch.bool)
            held[order[f * n // folds:(f + 1) * n // folds]] = True
            w = fit_head(subset(data, ~held), **point)
            per_fold.append(accuracy_by_fraction(subset(data, held), w))
        acc = {fr: sum(a[fr] for a in per_fold) / folds for fr in FRACTIONS}
        table.append({**point, "cv_accuracy": acc, "cv_mean": sum(acc.values()) / len(acc)})
    return table


def choose_by_validation(train: PrefixData, validation: PrefixData, table: list[dict],
                         whole_floor: float) -> tuple[dict, list[dict]]:
    """The weighting (prefix weight, value weight) chosen by validation, L2 by cross-validation on train: each
    weighting in the CV `table` takes its L2 of the best CV mean and is fit on all of `train`. The choice: the best
    mean validation accuracy over FRACTIONS among the weightings whose whole-reply validation accuracy is at least
    `whole_floor`; none: the whole-only weighting. -> (the chosen fit_head arguments, one row per weighting)."""
    best_l2: dict[tuple, dict] = {}
    for t in table:
        key = (t["prefix_weight"], t["value_weight"])
        if key not in best_l2 or t["cv_mean"] > best_l2[key]["cv_mean"]:
            best_l2[key] = t
    rows = []
    for (a, b), t in best_l2.items():
        point = dict(l2=t["l2"], prefix_weight=a, value_weight=b)
        acc = accuracy_by_fraction(validation, fit_head(train, **point))
        rows.append({**point, "validation_accuracy": acc, "validation_mean": sum(acc.values()) / len(acc)})
    allowed = [r for r in rows if r["validation_accuracy"][1.0] >= whole_floor - 1e-9]  # 1e-9: counts / 300
    best = max(allowed, key=lambda r: r["validation_mean"]) if allowed else \
        next(r for r in rows if not r["prefix_weight"] and not r["value_weight"])
    return {k: best[k] for k in ("l2", "prefix_weight", "value_weight")}, rows

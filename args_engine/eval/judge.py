"""The independent judge: all-MiniLM-L6-v2 embeddings + a linear Bradley-Terry head.

A different model family from the decoding RM (a BERT sentence encoder, not the LM's trunk), trained by the
project's trainer (`train_linear_head`, L2 chosen by 5-fold CV on the train split) on the SAME train split as
the default RM, so decoding never saw it and it can catch reward hacking of the decoding RM.

Features of a (prompt, reply): [embed(dialogue rendered as HH text, left-truncated), embed(reply)] (768).
The head is scaled to unit reward SD over the training dialogues. Asset: args_engine/assets/judge_minilm.
safetensors ("weight" [768]); its metadata holds the report (validation pairwise accuracy, the rebuild command).
"""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Sequence

import torch

from ..models.defaults import cache_dir
from ..reward.data import data_provenance, load_pairs, split_last_reply, split_pairs
from ..reward.train import choose_l2_by_cv, pairwise_accuracy, train_linear_head
from .prompts import Messages, hh_text

JUDGE_ASSET = Path(__file__).resolve().parent.parent / "assets" / "judge_minilm.safetensors"
FEATURES = "minilm(dialogue)+minilm(reply)"
L2_GRID = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # unit-norm embeddings want stronger L2 than LM features


def judge_features(encoder, prompts: Sequence[Messages], replies: Sequence[str]) -> torch.Tensor:
    dialogues = [hh_text(m, r) for m, r in zip(prompts, replies)]
    return torch.cat([encoder.encode(dialogues), encoder.encode(list(replies))], dim=-1)


class Judge:
    """score(prompts, replies) -> judge rewards. `encoder.encode(texts) -> [N, D]`; weight [2 * D]."""

    def __init__(self, weight: torch.Tensor, encoder, meta: dict | None = None):
        self.weight, self.encoder, self.meta = weight.double().flatten(), encoder, meta or {}
        self.family = getattr(encoder, "family", type(encoder).__name__)

    @classmethod
    def load(cls, path: str | Path = JUDGE_ASSET, device: str = "cpu", encoder=None) -> "Judge":
        from safetensors import safe_open

        from .embed import MiniLMEncoder

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"judge head {path} is missing; rebuild it with `args-engine train-judge`")
        with safe_open(str(path), framework="pt") as f:
            weight, meta = f.get_tensor("weight"), json.loads(f.metadata().get("report", "{}"))
        return cls(weight, encoder or MiniLMEncoder(device=device), meta)

    @property
    def validation_accuracy(self) -> float | None:
        return self.meta.get("validation_accuracy")

    def score(self, prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        if not replies:
            return []
        return (judge_features(self.encoder, prompts, replies).double() @ self.weight).tolist()


def check_independent(judge: Judge, rm) -> None:
    """The judge must not be (or share weights with) the decoding RM, nor be of its model family."""
    rm_family = getattr(getattr(rm, "config", None), "model_type", None)
    if rm_family is not None and judge.family == rm_family:
        raise ValueError(f"the judge ({judge.family}) is of the decoding RM's family ({rm_family}); it must be "
                         "independent of the model decoding optimises")
    rm_params = {p.data_ptr() for p in rm.parameters()} if hasattr(rm, "parameters") else set()
    enc_params = judge.encoder.parameters() if hasattr(judge.encoder, "parameters") else []
    if any(p.data_ptr() in rm_params for p in enc_params):
        raise ValueError("the judge shares weights with the decoding RM")


def _pair_features(encoder, pairs, key: str) -> torch.Tensor:
    """[2N, 2D] features, chosen and rejected interleaved; cached under the args_engine cache directory."""
    path = cache_dir() / f"judge-features-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    prompts, replies = [], []
    for p in pairs:
        for text in (p.chosen, p.rejected):
            m, r = split_last_reply(text)
            prompts.append(m)
            replies.append(r)
    feats = judge_features(encoder, prompts, replies)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats


def train_judge(data_path: str | None = None, out: str | Path = JUDGE_ASSET, l2: float | None = None,
                seed: int = 0, limit: int | None = None, encoder=None) -> dict:
    """Fit the judge head on the train split, report pairwise accuracy on the validation split, write `out`."""
    from safetensors.torch import save_file

    from .embed import MiniLMEncoder

    if limit is not None and limit < 2:
        raise ValueError(f"limit must be >= 2, got {limit}")
    encoder = encoder or MiniLMEncoder()
    splits = split_pairs(load_pairs(data_path))
    data = data_provenance(data_path)
    train, val = splits["train"][:limit], splits["validation"]
    name = getattr(encoder, "name", type(encoder).__name__)
    feats = {s: _pair_features(encoder, pairs, json.dumps([name, FEATURES, str(data_path), s, len(pairs)]))
             for s, pairs in (("train", train), ("validation", val))}
    cv = None
    if l2 is None:  # chosen on the training pairs alone; validation stays untouched until the report
        l2, cv = choose_l2_by_cv(feats["train"][0::2], feats["train"][1::2], grid=L2_GRID, seed=seed)
    w = train_linear_head(feats["train"][0::2], feats["train"][1::2], l2=l2)
    scale = float((feats["train"].double() @ w).std())
    w = w / scale  # unit reward SD over the training dialogues
    acc = {s: pairwise_accuracy(f[0::2].double() @ w, f[1::2].double() @ w) for s, f in feats.items()}
    cmd = ["args-engine", "train-judge", "--seed", seed]
    for flag, value in (("--limit", limit), ("--l2", None if cv else l2), ("--data", data_path)):
        if value is not None:
            cmd += [flag, value]
    if Path(out) != JUDGE_ASSET:
        cmd += ["--out", out]
    report = {"validation_accuracy": acc["validation"], "train_accuracy": acc["train"], "l2": l2,
              "cv_accuracy_by_l2": cv, "n_train_pairs": len(train), "n_validation_pairs": len(val),
              "encoder": name, "features": FEATURES, "reward_scale_divided_by": scale, "seed": seed, "data": data,
              "command": " ".join(shlex.quote(str(c)) for c in cmd) + (f"  # L2 {l2:g} (5-fold CV on train)"
                                                                        if cv else "")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": w.float().contiguous()}, str(out), metadata={"report": json.dumps(report)})
    return report

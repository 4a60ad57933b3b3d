"""`args-engine train-rm`: build a reward head (the whole-reply head, or with --prefix the prefix head, the default
RM) on the LM's trunk from the HH-RLHF train split."""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import torch

from ..models.defaults import (DEFAULT_LM_NAME, PREFIX_RM_ASSET, WHOLE_RM_ASSET, apply_reward_asset, cache_dir,
                               default_lm_dir, reward_model_on_trunk)
from .data import data_provenance, load_pairs, split_pairs
from .train import (TrunkFeatures, choose_l2_by_cv, extract_features, last_layers_rewards, pair_token_ids,
                    pairwise_accuracy, train_last_layers, train_linear_head)


def _cached(key: str) -> Path:
    return cache_dir() / f"rm-features-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def _features(trunk, seqs, tap_layer, key: str, desc: str) -> TrunkFeatures:
    """Trunk features, cached on disk: last-token features alone, tap states (large) in a file of their own."""
    last_path, tap_path = _cached(key), _cached(f"{key}|tap={tap_layer}")
    if last_path.exists() and (tap_layer is None or tap_path.exists()):
        return TrunkFeatures(torch.load(last_path), torch.load(tap_path) if tap_layer is not None else None)
    feats = extract_features(trunk, seqs, tap_layer=tap_layer, desc=desc)
    last_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats.last, last_path)
    if tap_layer is not None:
        torch.save(feats.tap, tap_path)
    return feats


def _rebuild_command(out, tune_layers, max_len, seed, limit, l2, l2_by_cv, epochs, rank, lr, lm_dir,
                     data_path, prefix_positions: int | None = None, baseline=None) -> str:
    cmd = ["args-engine", "train-rm", "--tune-layers", tune_layers, "--max-len", max_len, "--seed", seed]
    if tune_layers:
        cmd += ["--epochs", epochs, "--rank", rank, "--lr", lr]
    if prefix_positions is not None:
        cmd = ["args-engine", "train-rm", "--prefix", "--positions", prefix_positions, "--max-len", max_len,
               "--seed", seed]
    for flag, value in (("--limit", limit), ("--l2", None if l2_by_cv else l2), ("--data", data_path),
                        ("--baseline", baseline), ("--out", out)):
        shipped = PREFIX_RM_ASSET if prefix_positions is not None else WHOLE_RM_ASSET
        if value is not None and not (flag == "--out" and Path(value).resolve() == shipped):
            cmd += [flag, value]
    if lm_dir != str(cache_dir() / DEFAULT_LM_NAME):
        cmd += ["--lm", lm_dir]
    note = f"  # head L2 {l2:g} (5-fold CV on train)" if l2_by_cv and prefix_positions is None else ""
    return " ".join(shlex.quote(str(c)) for c in cmd) + note


def train_reward_model(lm_dir: str | None = None, data_path: str | None = None, out: str | Path = WHOLE_RM_ASSET,
                       tune_layers: int = 0, max_len: int = 768, seed: int = 0, limit: int | None = None,
                       l2: float | None = None, epochs: int = 2, rank: int = 8, lr: float = 1e-3) -> dict:
    """Train a reward head (and optional LoRA on the last `tune_layers` layers) on a Llama-family trunk
    (default: the default LM's).

    Writes the small trained part to `out` (safetensors, with the command and scores as metadata) and returns
    a report with the pairwise accuracy on the validation split for the head alone and for the final model.
    """
    if tune_layers < 0:
        raise ValueError(f"need tune_layers >= 0, got {tune_layers}")
    lm_dir, tok, rm, train, val, data = _setup(lm_dir, data_path, out, limit, max_len)
    if tune_layers > rm.config.num_hidden_layers:
        raise ValueError(f"tune_layers={tune_layers} exceeds the trunk's {rm.config.num_hidden_layers} layers")
    tap = rm.config.num_hidden_layers - tune_layers if tune_layers else None
    feats = {}
    for name, pairs in (("train", train), ("validation", val)):
        ids = pair_token_ids(tok, pairs, max_len)
        seqs = [s for pair in ids for s in pair]  # chosen, rejected interleaved
        key = json.dumps([lm_dir, data_path, name, len(pairs), max_len])
        feats[name] = _features(rm.model, seqs, tap, key, desc=f"trunk features ({name})")

    def chosen_rejected(x):
        return x[0::2], x[1::2]

    cv = None
    if l2 is None:  # chosen on the training pairs alone; validation stays untouched until the report
        l2, cv = choose_l2_by_cv(*chosen_rejected(feats["train"].last), seed=seed)
    w = train_linear_head(*chosen_rejected(feats["train"].last), l2=l2)
    head_val = pairwise_accuracy(*chosen_rejected(feats["validation"].last.double() @ w))
    head_train = pairwise_accuracy(*chosen_rejected(feats["train"].last.double() @ w))
    asset = {"score.weight": w.float().unsqueeze(0)}
    report = {"head_only": {"train_accuracy": head_train, "validation_accuracy": head_val, "l2": l2,
                            "cv_accuracy_by_l2": cv}}
    train_rewards = feats["train"].last.double() @ w
    if tune_layers:
        with torch.no_grad():
            rm.score.weight.copy_(asset["score.weight"])
        asset = train_last_layers(rm, tune_layers, *chosen_rejected(feats["train"].tap), rank=rank, epochs=epochs,
                                  lr=lr, seed=seed)
        apply_reward_asset(rm, {k: v for k, v in asset.items() if k != "score.weight"})
        val_r = last_layers_rewards(rm, tune_layers, feats["validation"].tap)
        train_rewards = last_layers_rewards(rm, tune_layers, feats["train"].tap)
        report[f"lora_last_{tune_layers}"] = {"train_accuracy": pairwise_accuracy(*chosen_rejected(train_rewards)),
                                              "validation_accuracy": pairwise_accuracy(*chosen_rejected(val_r))}
    # Unit reward scale on the training dialogues, so that w in the paper's range [0.5, 2] means the same
    # trade-off here (ARGS ranks by log p + w * r; only the scale of r matters, not its offset).
    scale = float(train_rewards.std())
    asset["score.weight"] = (asset["score.weight"] / scale).float().contiguous()
    final = report[f"lora_last_{tune_layers}"] if tune_layers else report["head_only"]
    report.update(validation_accuracy=final["validation_accuracy"], reward_scale_divided_by=scale,
                  n_train_pairs=len(train), n_validation_pairs=len(val), seed=seed, tune_layers=tune_layers, data=data,
                  command=_rebuild_command(out, tune_layers, max_len, seed, limit, l2, cv is not None, epochs,
                                           rank, lr, lm_dir, data_path))
    _save(asset, report, out)
    return report


def _setup(lm_dir, data_path, out, limit, max_len):
    """Checked arguments, the trunk (as an untrained RM), its tokenizer, the train and validation pairs and the
    data's provenance."""
    from transformers import AutoTokenizer

    if (limit is not None and limit < 1) or max_len < 2:
        raise ValueError(f"need limit >= 1 and max_len >= 2 (got {limit}, {max_len})")
    if lm_dir is not None and Path(out).resolve() in (WHOLE_RM_ASSET, PREFIX_RM_ASSET):
        raise ValueError("a head trained on another trunk cannot replace a shipped head: pass --out")
    lm_dir = str(lm_dir or default_lm_dir())
    tok = AutoTokenizer.from_pretrained(lm_dir)
    rm = reward_model_on_trunk(lm_dir)
    splits = split_pairs(load_pairs(data_path))
    return lm_dir, tok, rm, splits["train"][:limit], splits["validation"], data_provenance(data_path)


def _save(asset: dict, report: dict, out) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in asset.items()}, str(out), metadata={"report": json.dumps(report)})


PREFIX_GRID = [dict(l2=l2, prefix_weight=a, value_weight=b) for l2 in (0.03, 0.1, 0.3, 1.0)
               for a in (0.0, 0.5, 1.0, 2.0) for b in (0.0, 0.3)]


def train_prefix_head(lm_dir: str | None = None, data_path: str | None = None, out: str | Path = PREFIX_RM_ASSET,
                      max_len: int = 768, seed: int = 0, limit: int | None = None, positions: int = 8,
                      baseline: str | Path | None = None, grid: list[dict] | None = None) -> dict:
    """A prefix-aware linear head on a frozen Llama-family trunk (default: the default LM's); see reward/prefix.py.

    L2 by 5-fold cross-validation on the train split (the best mean accuracy over reply fractions 25/50/75/100%,
    per weighting); the weighting (prefix weight, value weight) by validation, as issue 27 asks: the best mean
    accuracy over the fractions among the weightings whose whole-reply validation accuracy is within 1 point of
    the reference head's (the `baseline` head file when given, e.g. the shipped whole-reply head; else the whole-only
    fit). The report holds validation accuracy by fraction for the new head, the whole-only fit and the
    baseline, and every weighting's row; validation figures of the chosen head are optimistic by that choice."""
    from safetensors.torch import load_file

    from . import prefix as pf

    if positions < 1:
        raise ValueError(f"need positions >= 1, got {positions}")
    lm_dir, tok, rm, train, val, data = _setup(lm_dir, data_path, out, limit, max_len)
    feats = {}
    for name, pairs in (("train", train), ("validation", val)):
        folder = pf.cache_folder(cache_dir(), lm_dir, data["sha256"], name, len(pairs), max_len)
        states = pf.reply_states(rm.model, pf.dialogue_ids(tok, pairs, max_len), folder, desc=f"reply states ({name})")
        feats[name] = pf.pair_features(states, positions)
    table = pf.cv_table(feats["train"], grid or PREFIX_GRID, seed=seed)
    plain = [t for t in table if not t["prefix_weight"] and not t["value_weight"]]
    if not plain:
        raise ValueError("the grid needs a whole-only point (prefix_weight = value_weight = 0)")
    heads = {"whole_only": pf.fit_head(feats["train"], l2=max(plain, key=lambda t: t["cv_accuracy"][1.0])["l2"])}
    if baseline is not None:
        heads["baseline"] = load_file(str(baseline))["score.weight"][0].double()
    reference = heads.get("baseline", heads["whole_only"])
    floor = pf.accuracy_by_fraction(feats["validation"], reference)[1.0] - 0.01
    chosen, weightings = pf.choose_by_validation(feats["train"], feats["validation"], table, floor)
    w = heads["prefix"] = pf.fit_head(feats["train"], **chosen)
    validation = {name: _by_fraction(pf.accuracy_by_fraction(feats["validation"], h)) for name, h in heads.items()}
    train_rewards = torch.cat(feats["train"].whole) @ w  # [2N]
    scale = float(train_rewards.std())  # unit reward SD over the training dialogues' whole replies, as today
    report = {"kind": "prefix", "chosen": chosen, "positions": positions,
              "validation_accuracy_by_fraction": validation,
              "validation_accuracy": validation["prefix"]["1"],
              "cv": [{**t, "cv_accuracy": _by_fraction(t["cv_accuracy"])} for t in table],
              "whole_floor": floor,
              "weightings": [{**r, "validation_accuracy": _by_fraction(r["validation_accuracy"])} for r in weightings],
              "baseline": str(baseline) if baseline is not None else None,
              "reward_scale_divided_by": scale, "n_train_pairs": len(train), "n_validation_pairs": len(val),
              "seed": seed, "tune_layers": 0, "data": data,
              "command": _rebuild_command(out, 0, max_len, seed, limit, None, False, 0, 0, 0, lm_dir, data_path,
                                          prefix_positions=positions, baseline=baseline)}
    _save({"score.weight": (w / scale).float().unsqueeze(0)}, report, out)
    return report


def _by_fraction(acc: dict[float, float]) -> dict[str, float]:
    return {f"{f:g}": a for f, a in acc.items()}

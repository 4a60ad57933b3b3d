"""HH-RLHF preference pairs: parsing, chat rendering and the fixed, disjoint splits.

The split definition lives here and only here: the default RM and the judge train on `train`, report
accuracy on `validation`, and decoding is evaluated on `evaluation`. `assert_disjoint_from_training`
guards any evaluation prompt set against pairs that trained a reward model.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

SPLIT_SEED = 20240101
SPLIT_SIZES = {"evaluation": 300, "validation": 300}  # train = the rest (1,412 of the 2,012 pairs here)
_TURN = re.compile(r"\n\n(Human|Assistant):")


# The file every committed figure, split, reward head and judge was made from: 2,012 pairs of HH-RLHF's
# harmless-base test split, shuffled (this project's machines have it beside the checkout). Another file works
# too, but its splits, and so every figure, differ: load_pairs says so once.
REFERENCE_DATA = {"file": "harmless-base.jsonl.gz", "pairs": 2012,
                  "sha256": "76eaf281bbac987f0bf4106b2889b5aed5e4ef83320d6d483a449a3ea41347b0"}
DATA_ENV = "ARGS_ENGINE_HH_RLHF"  # a .jsonl(.gz) file, or a folder holding one of the names below
HUB_REPO, HUB_FILE = "Anthropic/hh-rlhf", "harmless-base/test.jsonl.gz"  # a dataset repo on the Hugging Face Hub
_FOLDER_NAMES = ("harmless-base.jsonl.gz", "harmless-base/test.jsonl.gz", "test.jsonl.gz")
_warned: set[Path] = set()


def _in_folder(folder: Path) -> Path | None:
    return next((folder / name for name in _FOLDER_NAMES if (folder / name).is_file()), None)


def _beside_checkout(roots: list[Path] | None = None) -> Path | None:
    """../shared/data/hh-rlhf/ beside the checkout (this project's own machines and CI; read in place): only
    the checkout root's own sibling, and the working directory's; never a "shared" folder further up, which a
    copy placed deeper on the same machine would otherwise find."""
    roots = roots if roots is not None else [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in roots:
        cand = root.parent / "shared" / "data" / "hh-rlhf" / REFERENCE_DATA["file"]
        if cand.is_file():
            return cand
    return None


def _from_hub() -> Path:
    """HH-RLHF's harmless-base test file through huggingface_hub: its cache, HF_HOME and HF_HUB_OFFLINE."""
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset"))


def default_data_path() -> Path:
    """The HH-RLHF preference pairs, found as users have them, in this order: the `ARGS_ENGINE_HH_RLHF`
    environment variable (a file, or a folder holding harmless-base.jsonl.gz or harmless-base/test.jsonl.gz); the
    folder beside the checkout (../shared/data/hh-rlhf/); the Hugging Face Hub (`Anthropic/hh-rlhf`, file
    `harmless-base/test.jsonl.gz`, with the hub's own cache and offline rules). An explicit path (`--data`, the
    API's `data_path`) skips all of this. The error names every place tried."""
    tried = []
    env = os.environ.get(DATA_ENV)
    if env:
        found = Path(env) if Path(env).is_file() else _in_folder(Path(env)) if Path(env).is_dir() else None
        if found is None:
            raise FileNotFoundError(f"{DATA_ENV}={env}: no such file, nor a folder holding one of {_FOLDER_NAMES}")
        return found
    tried.append(f"${DATA_ENV} (not set)")
    found = _beside_checkout()
    if found is not None:
        return found
    tried.append(f"../shared/data/hh-rlhf/{REFERENCE_DATA['file']} beside the checkout (absent)")
    try:
        return _from_hub()
    except Exception as e:  # offline with an empty cache, no network, huggingface_hub missing
        tried.append(f"the Hugging Face Hub, dataset {HUB_REPO} file {HUB_FILE} ({type(e).__name__}: "
                     f"{(str(e).split('. ')[0].splitlines() or [''])[0]})")
    raise FileNotFoundError(
        "HH-RLHF preference data not found; tried: " + "; ".join(tried) + ". Provide it with --data FILE (or "
        f"data_path=), set {DATA_ENV} to a .jsonl(.gz) file of {{\"chosen\", \"rejected\"}} rows, or let "
        f"huggingface_hub download {HUB_REPO} (online, or HF_HUB_OFFLINE=1 with it in the hub cache)")


def file_sha256(path: str | Path) -> str:
    """The file's sha256, hashed once per version of the file (load_pairs' check and data_provenance share it)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_provenance(path: str | Path | None = None) -> dict:
    """What to record beside a figure or asset made from the data: the file, its sha256 and pair count, and
    whether it is the reference file the committed figures used."""
    path = Path(path) if path else default_data_path()
    sha = file_sha256(path)
    return {"file": path.name, "sha256": sha, "pairs": sum(1 for _ in read_jsonl(path)),
            "reference": sha == REFERENCE_DATA["sha256"]}


def _warn_if_not_reference(path: Path) -> None:
    key = path.resolve()
    if key in _warned:
        return
    _warned.add(key)
    if file_sha256(path) != REFERENCE_DATA["sha256"]:
        logger.warning("%s is not the reference HH-RLHF file (sha256 %s...): the splits, and every figure made "
                       "from them, differ from the committed ones", path, REFERENCE_DATA["sha256"][:12])


@dataclass(frozen=True)
class PreferencePair:
    chosen: str
    rejected: str


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a .jsonl or .jsonl.gz file (gzip is told by its magic
    bytes, not the name). A line that is not a JSON object raises ValueError naming the file and line."""
    path = Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8") as f:
        n = 0
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: a row must be a JSON object, got {type(row).__name__}")
                yield n, row
        except (UnicodeDecodeError, OSError, EOFError) as e:  # binary data, a truncated or corrupt gzip
            raise ValueError(f"{path}:{n + 1}: cannot read as UTF-8 JSONL{' (gzip)' if gzipped else ''}: {e}") from None


def load_pairs(path: str | Path | None = None) -> list[PreferencePair]:
    path = Path(path) if path else default_data_path()
    _warn_if_not_reference(path)
    pairs = []
    for n, row in read_jsonl(path):
        if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise ValueError(f"{path}:{n}: a preference pair needs string 'chosen' and 'rejected' fields")
        pairs.append(PreferencePair(row["chosen"], row["rejected"]))
    return pairs


def split_pairs(pairs: list[PreferencePair], seed: int = SPLIT_SEED) -> dict[str, list[PreferencePair]]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval, n_val = SPLIT_SIZES["evaluation"], SPLIT_SIZES["validation"]
    if len(pairs) < n_eval + n_val + 1:
        raise ValueError(f"need more than {n_eval + n_val} pairs to split, got {len(pairs)}")
    pick = lambda idx: [pairs[i] for i in idx]
    return {"evaluation": pick(order[:n_eval]),
            "validation": pick(order[n_eval:n_eval + n_val]),
            "train": pick(order[n_eval + n_val:])}


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{'role': 'user', 'content': 'a'}, {'role': 'assistant', ...}]."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"dialogue does not start with a Human/Assistant turn: {text[:60]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def split_last_reply(text: str) -> tuple[list[dict[str, str]], str]:
    """The dialogue before the last assistant reply (the prompt) and that reply."""
    messages = parse_dialogue(text)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("dialogue does not end with an assistant reply")
    return messages[:-1], messages[-1]["content"]


def prompt_key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True)


def training_prompt_keys(path: str | Path | None = None) -> set[str]:
    """Prompts (dialogue before the last reply) of every pair a reward model may train or validate on."""
    splits = split_pairs(load_pairs(path))
    return {prompt_key(split_last_reply(p.chosen)[0]) for name in ("train", "validation") for p in splits[name]}


def assert_disjoint_from_training(prompts: list[list[dict[str, str]]], path: str | Path | None = None) -> None:
    seen = training_prompt_keys(path)
    overlap = sum(prompt_key(m) in seen for m in prompts)
    if overlap:
        raise ValueError(f"{overlap} evaluation prompt(s) appear in the reward model's training/validation pairs")

"""ARGS over a dataset on Ray Data: `generate_dataset(ds, params, lm=..., rm=..., num_replicas=N)` and
`args-engine generate --ray --prompts-file big.jsonl --out DIR`.

Each of the N engine actors (one GPU each on a GPU cluster) takes batches of rows through `map_batches` and
decodes every batch with its engine's continuous batching. Rows keep their input order (Ray Data's
preserve_order), so a run that stops midway has written a prefix of the output, and a rerun decodes only the
ids not yet written.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..engine.request import GenerationOutput
from ..params import ARGSParams
from .placement import gpus_per_engine

OUTPUT_COLUMNS = ("id", "prompt", "prompt_token_ids", "text", "token_ids", "rewards", "reward", "finish_reason",
                  "rm_tokens", "tokens_per_s")


@dataclass
class RayBatchOptions:
    """num_replicas: engine actors. rows_per_batch: rows handed to an actor at once (its engine decodes them with
    continuous batching, `batch_size` sequences at a time). num_gpus per actor: None = one per CUDA device the
    engine uses (LM and RM), else 0. address: the Ray cluster to join (None: `ray.init()`'s default, a local cluster when none
    is running)."""

    num_replicas: int = 1
    rows_per_batch: int = 64
    num_cpus: float = 1.0
    num_gpus: float | None = None
    address: str | None = None

    def __post_init__(self):
        for name in ("num_replicas", "rows_per_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")


class EngineActor:
    """A Ray Data callable class: one ARGSEngine per actor, built once, decoding batch after batch."""

    def __init__(self, engine_options: dict, params: dict):
        from ..engine import ARGSEngine

        self.engine = ARGSEngine.from_pretrained(**engine_options)
        self.params = ARGSParams(**params)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        prompts = [_as_prompt(p) for p in batch["prompt"]]
        seeds = batch["seed"] if "seed" in batch else [None] * len(prompts)
        params = [self.params if s is None else dataclasses.replace(self.params, seed=int(s)) for s in seeds]
        outs = self.engine.generate(prompts, params, progress=False)
        return {"id": list(batch["id"]), "prompt": list(batch["prompt"]),
                "prompt_token_ids": [o.prompt_token_ids for o in outs], "text": [o.text for o in outs],
                "token_ids": [o.token_ids for o in outs], "rewards": [o.rewards for o in outs],
                "reward": [o.reward for o in outs], "finish_reason": [o.finish_reason for o in outs],
                "rm_tokens": [o.rm_tokens for o in outs], "tokens_per_s": [o.tokens_per_s for o in outs]}


def _as_prompt(value) -> Any:
    """A prompt as Ray Data hands it back: a string, or a chat as an array of {role, content} mappings."""
    if isinstance(value, str):
        return value
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def generate_dataset(ds, params: ARGSParams, lm=None, rm=None, device: str = "cpu", dtype: str = "float32",
                     batch_size: int = 16, options: RayBatchOptions | None = None, skip_ids=None,
                     **engine_options):
    """Decode every row of `ds` (a ray.data.Dataset with columns `id` and `prompt`: a string or a chat message
    list; an optional integer `seed` overrides params.seed per row) -> a Dataset with OUTPUT_COLUMNS, in input
    order. lm / rm: local model directories (None: the embedded defaults); they are loaded by each actor.
    skip_ids: ids to leave out (already done). engine_options: further ARGSEngine keywords (native options,
    rm_weights, ...)."""
    options = options or RayBatchOptions()
    params.validate()
    missing = {"id", "prompt"} - set(ds.schema().names)
    if missing:
        raise ValueError(f"the dataset needs the columns 'id' and 'prompt'; it lacks {sorted(missing)}")
    if skip_ids:
        done = frozenset(skip_ids)
        ds = ds.filter(lambda row: row["id"] not in done)
    gpus = options.num_gpus if options.num_gpus is not None else gpus_per_engine(device,
                                                                                 engine_options.get("rm_device"))
    engine = dict(lm=lm, rm=rm, device=device, dtype=dtype, batch_size=batch_size, **engine_options)
    out = ds.map_batches(EngineActor, fn_constructor_kwargs={"engine_options": engine,
                                                             "params": dataclasses.asdict(params)},
                         batch_size=options.rows_per_batch, batch_format="numpy", concurrency=options.num_replicas,
                         num_cpus=options.num_cpus, num_gpus=gpus)
    out.context.execution_options.preserve_order = True  # each dataset carries its own copy of the context
    return out


def done_ids(results: Path) -> set:
    """Ids already in a results.jsonl; a last line cut short by a crash is dropped from the file."""
    if not results.exists():
        return set()
    lines = results.read_bytes().split(b"\n")
    keep, ids = [], set()
    for line in lines:
        if not line.strip():
            continue
        try:
            ids.add(json.loads(line)["id"])
            keep.append(line)
        except (ValueError, KeyError):
            break  # a torn write: everything after it is redone
    results.write_bytes(b"".join(x + b"\n" for x in keep))
    return ids


def generate_to_dir(prompts: list, out: str | Path, params: ARGSParams, options: RayBatchOptions | None = None,
                    progress: bool = True, **engine_kwargs) -> Path:
    """`args-engine generate --ray`: decode `prompts` (row i has id i) into OUT/results.jsonl, one JSON object
    per row in input order, appended as rows finish; rows already there are skipped. -> the results path."""
    from ..progress import progress_bar

    options = options or RayBatchOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = done_ids(results)
    todo = [{"id": i, "prompt": p} for i, p in enumerate(prompts) if i not in done]
    if not todo:
        return results
    _init_ray(options)
    import ray.data

    ds = generate_dataset(ray.data.from_items(todo), params, options=options, **engine_kwargs)
    with results.open("a") as f, progress_bar(total=len(todo), desc="ARGS (ray)", unit="prompt",
                                               enabled=progress) as bar:
        for row in _rows(ds):
            f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(1)
    return results


def generate_prompts(prompts: list, params: ARGSParams, options: RayBatchOptions | None = None,
                     batch_size: int = 16, seed_offsets: bool = False, on_row=None,
                     **engine_kwargs) -> list[GenerationOutput]:
    """Like ARGSEngine.generate, on Ray: one GenerationOutput per prompt, in order. seed_offsets: prompt i
    samples with params.seed + i (as `args-engine eval` seeds its rows). on_row(1) after each output."""
    _init_ray(options or RayBatchOptions())
    import ray.data

    rows = [{"id": i, "prompt": p, **({"seed": params.seed + i} if seed_offsets and params.seed is not None else {})}
            for i, p in enumerate(prompts)]
    outs = []
    for row in _rows(generate_dataset(ray.data.from_items(rows), params, options=options, batch_size=batch_size,
                                      **engine_kwargs)):
        outs.append(GenerationOutput(prompts[row["id"]], row["prompt_token_ids"], row["token_ids"], row["text"],
                                     row["rewards"], row["finish_reason"], row["tokens_per_s"], row["rm_tokens"]))
        if on_row:
            on_row(1)
    return outs


def _init_ray(options: RayBatchOptions) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=False)


def _rows(ds) -> Iterator[dict]:
    for row in ds.iter_rows():
        yield {k: _plain(row[k]) for k in OUTPUT_COLUMNS}


def _plain(value):
    """numpy scalars and arrays from Ray Data as JSON values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value

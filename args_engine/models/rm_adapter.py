"""RewardAdapter: a reward model whose head is its own code, made usable by the engine.

Most public RMs ship as a transformers `*ForSequenceClassification` (a linear `score` head on the last token of a
decoder, or a classifier on an encoder's pooled first token), and the engine runs them as they are. Some ship
their own modelling code instead: ArmoRM (`RLHFlow/ArmoRM-Llama3-8B-v0.1`, loaded with trust_remote_code) puts a
regression layer and a gating network on a Llama trunk and returns an output object whose `score` is the gated
preference and whose `rewards` are its objectives. Such a model has no `score` Linear to read at every position,
so `RewardModel` refuses it and names this adapter.

RewardAdapter wraps any callable, usually a torch module, that maps `(input_ids [B, T], attention_mask [B, T])`
to one score per row: a tensor [B] or [B, N], or an output object holding one (`output=`). The engine then runs
it the way it runs an encoder RM: through the text bridge (decoding/bridge.py), each step every candidate's whole
text (the prompt in the RM tokenizer's chat template, then the response) tokenized by the RM's tokenizer and
scored in one batch. No prefix cache is possible (the scorer is a black box), so a step costs k forwards over the
whole text (O(k x T)); `backend="auto"` picks "reference", and "native" batches the LM side.

    >>> from args_engine.models.rm_adapter import RewardAdapter
    >>> armo = AutoModelForSequenceClassification.from_pretrained("RLHFlow/ArmoRM-Llama3-8B-v0.1",
    ...                                                           trust_remote_code=True)
    >>> rm = RewardAdapter(armo, output="score")                  # or output="rewards", num_outputs=19
    >>> engine = ARGSEngine(lm, rm, tokenizer=lm_tok, rm_tokenizer=armo_tok)

Batches are padded on the RM tokenizer's padding side, with `attention_mask` 0 on the pad positions; a scorer
that does not read the mask (that finds each row's end some other way) can take `per_row=True`: every text alone,
unpadded, one call each."""
from __future__ import annotations

from typing import Callable

import torch
from transformers.modeling_outputs import SequenceClassifierOutput


class RewardAdapterConfig:
    """What the engine reads of a reward model's config: its kind, its outputs, its context length."""

    model_type = "reward_adapter"
    is_encoder_decoder = False

    def __init__(self, num_labels: int, max_position_embeddings: int | None):
        self.num_labels, self.max_position_embeddings = num_labels, max_position_embeddings

    def __repr__(self) -> str:
        return (f"RewardAdapterConfig(num_labels={self.num_labels}, "
                f"max_position_embeddings={self.max_position_embeddings})")


class RewardAdapter(torch.nn.Module):
    """A callable scorer as a reward model the engine can run (see the module docstring).

    scorer: called as `scorer(input_ids=..., attention_mask=...)` under torch.no_grad; a torch module is kept as a
        submodule (moved by .to(), its parameters give the RM's device and dtype).
    num_outputs: the scores per row, N (1: one reward; N > 1: a multi-objective RM, combined with the engine's
        rm_weights / rm_objective as any multi-output head).
    output: where the scores are in what the scorer returns: None (a tensor, else its `.logits`), an attribute or
        key name ("score", "rewards"), or a function of the return value.
    max_length: the longest text the scorer reads (the bridge keeps the end of longer ones); default: the
        scorer's config's context length when it has a config, else no limit.
    per_row: call the scorer once per text, unpadded (for scorers that ignore attention_mask).
    device, dtype: for a scorer without parameters (a plain function): where its inputs go and the dtype the
        rewards are returned in. A module's own parameters decide both otherwise.
    """

    def __init__(self, scorer: Callable, num_outputs: int = 1, output: str | Callable | None = None,
                 max_length: int | None = None, per_row: bool = False, device="cpu", dtype=torch.float32):
        super().__init__()
        if not callable(scorer):
            raise TypeError(f"RewardAdapter takes a callable (a torch module or a function of input_ids and "
                            f"attention_mask), got {type(scorer).__name__}")
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be an integer >= 1, got {num_outputs!r}")
        if not (output is None or isinstance(output, str) or callable(output)):
            raise TypeError(f"output must be None, an attribute name or a function, got {type(output).__name__}")
        if isinstance(scorer, torch.nn.Module):
            self.scorer = scorer
        else:
            self._scorer_fn = scorer
        self.num_outputs, self.output, self.per_row = num_outputs, output, per_row
        if next(self.parameters(), None) is None:  # a plain function: an empty parameter carries device and dtype
            self._anchor = torch.nn.Parameter(torch.empty(0, device=device, dtype=dtype), requires_grad=False)
        if max_length is None and getattr(scorer, "config", None) is not None:
            from .hf import context_length
            max_length = context_length(scorer.config)
        self.config = RewardAdapterConfig(num_outputs, max_length)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _call(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scorer = self.scorer if "scorer" in self._modules else self._scorer_fn
        result = scorer(input_ids=input_ids, attention_mask=attention_mask)
        if callable(self.output):
            scores = self.output(result)
        elif isinstance(self.output, str):
            scores = result.get(self.output) if isinstance(result, dict) else getattr(result, self.output, None)
        else:
            scores = result if isinstance(result, torch.Tensor) else getattr(result, "logits", None)
        if not isinstance(scores, torch.Tensor):
            where = f"its {self.output!r}" if isinstance(self.output, str) else "it"
            raise TypeError(f"the RM scorer returned {type(result).__name__} and {where} is not a tensor of scores; "
                            "pass output= (an attribute name such as 'score', or a function of the return value)")
        B, N = input_ids.shape[0], self.num_outputs
        if scores.dim() == 1 and N == 1 and scores.shape[0] == B:
            scores = scores[:, None]
        if tuple(scores.shape) != (B, N):
            raise ValueError(f"the RM scorer returned scores of shape {tuple(scores.shape)} for {B} rows; expected "
                             f"[{B}]" + (f" or [{B}, {N}]" if N == 1 else f" x {N} outputs: [{B}, {N}]") +
                             " (num_outputs= sets N)")
        return scores.to(self.dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **ignored) -> SequenceClassifierOutput:
        """-> an output whose logits [B, N] are the scores (RewardModel.encoder_rewards reads them). Other
        tokenizer outputs (token_type_ids, ...) are not passed on."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.per_row:
            return SequenceClassifierOutput(logits=self._call(input_ids, attention_mask))
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            kept = ids[mask.bool()][None]  # [1, T_b]: the text alone, wherever the padding was
            rows.append(self._call(kept, torch.ones_like(kept)))
        return SequenceClassifierOutput(logits=torch.cat(rows))

"""Loading and checking Hugging Face LMs and reward models, and the pieces of them the decoders call."""
from __future__ import annotations

import contextlib
import functools
import inspect
from pathlib import Path

import torch

from ..params import check_rm_weights
from ..progress import quiet_transformers

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype | str:
    """A torch dtype from its name; "auto" stays "auto": the checkpoint's own dtype (its config's), as
    transformers' from_pretrained reads it."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES) + ['auto']}, got {dtype!r}")
    return DTYPES[dtype]


def _is_path(source: str | Path) -> bool:
    """A source that can only be a path (a Hub id is `name` or `org/name`): a Path, or a string that starts like
    one or has more than one '/'."""
    text = str(source)
    return isinstance(source, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1


@contextlib.contextmanager
def _named_load_errors(what: str, source: str, revision: str | None):
    """Turns transformers' loading errors into ones that say what was tried: the id, the revision, and whether the
    hub was offline (HF_HUB_OFFLINE=1: only the local hub cache is searched)."""
    try:
        yield
    except OSError as e:
        from huggingface_hub import constants
        hub = ("offline (HF_HUB_OFFLINE=1): only the local hub cache under HF_HOME was searched"
               if constants.HF_HUB_OFFLINE else "online, through the Hugging Face Hub and its cache")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{what} {source!r} (revision {revision or 'main'}) could not be loaded: it is not a "
                                f"local directory, and as a Hugging Face model id, {hub}: {first}") from e
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ValueError(f"{what} {source!r} (revision {revision or 'main'}) runs code from its repository to load; "
                         "if you trust that code, pass trust_remote_code=True (CLI: --trust-remote-code)") from e


def _load(source, default, auto_cls, what: str, device: str, dtype, revision: str | None = None,
          trust_remote_code: bool = False) -> tuple[torch.nn.Module, object]:
    """source: None (the default model), a local HF directory, a Hugging Face model id (from the hub, or its cache
    when offline; `revision`: a branch, tag or commit), or a loaded model. -> (model, tokenizer or None).
    trust_remote_code: run a repository's own modelling code (never implied)."""
    from transformers import AutoTokenizer

    if not isinstance(source, (str, Path, type(None))):
        return source.to(device).eval(), None
    name = default() if source is None else source
    local = Path(name).expanduser()
    if not local.is_dir() and _is_path(name):
        raise FileNotFoundError(f"{what} directory not found: {local.absolute()}")
    if local.is_dir() and revision is not None:
        raise ValueError(f"a revision applies to a Hugging Face model id; {what} {str(name)!r} is a local directory")
    where = str(local) if local.is_dir() else str(name)
    options = dict(revision=revision, trust_remote_code=trust_remote_code)
    with quiet_transformers(), _named_load_errors(what, where, revision):
        model = auto_cls.from_pretrained(where, dtype=resolve_dtype(dtype), **options)
        tokenizer = None
        if not local.is_dir():
            try:
                tokenizer = AutoTokenizer.from_pretrained(where, **options)
            except (OSError, ValueError) as e:  # a repository with weights and no tokenizer: the LM's reads the text
                if "trust_remote_code" in str(e):
                    raise
                tokenizer = None
        elif any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
        return model.to(device).eval(), tokenizer


def load_lm(lm, device: str, dtype, revision: str | None = None,
            trust_remote_code: bool = False) -> tuple[torch.nn.Module, object]:
    """`lm`: None (the default SmolLM2-135M-Instruct), a local HF directory, a Hugging Face model id, or a loaded
    causal LM."""
    from transformers import AutoModelForCausalLM

    from .defaults import default_lm_dir
    return _load(lm, default_lm_dir, AutoModelForCausalLM, "LM", device, dtype, revision, trust_remote_code)


def load_rm(rm, device: str, dtype, revision: str | None = None,
            trust_remote_code: bool = False) -> tuple[torch.nn.Module, object]:
    """`rm`: None (the default reward model), a local HF directory, a Hugging Face model id, or a loaded
    sequence-classification model."""
    from transformers import AutoModelForSequenceClassification

    from .defaults import default_rm_dir
    return _load(rm, default_rm_dir, AutoModelForSequenceClassification, "RM", device, dtype, revision,
                 trust_remote_code)


def load_pair(lm, rm, device: str, dtype, rm_device: str | None = None, revision: str | None = None,
              rm_revision: str | None = None, trust_remote_code: bool = False
              ) -> tuple[torch.nn.Module, object, torch.nn.Module, object]:
    """load_lm + load_rm -> (lm, lm tokenizer, rm, rm tokenizer), keeping one copy of a trunk both share: the
    default RM is built on the default LM's trunk module, and two sources whose trunks hold the same
    weights end up sharing the LM's. rm_device: where the RM goes (default: `device`); on another device than
    the LM, the RM keeps a trunk of its own there. revision / rm_revision: of a Hub id each."""
    import copy

    from .defaults import default_reward_model, head_on_trunk, is_head_file

    apart = rm_device is not None and torch.device(rm_device) != torch.device(device)
    lm_model, lm_tok = load_lm(lm, device, dtype, revision, trust_remote_code)
    if is_head_file(rm):  # a trained head (train-rm --out) on this LM's trunk
        rm_model = head_on_trunk(lm_model, rm)
        return lm_model, lm_tok, copy.deepcopy(rm_model).to(rm_device) if apart else rm_model, None
    if lm is None and rm is None:
        rm_model = default_reward_model(lm_model)
        if rm_model is not None:
            return lm_model, lm_tok, copy.deepcopy(rm_model).to(rm_device) if apart else rm_model, None
    rm_model, rm_tok = load_rm(rm, rm_device or device, dtype, rm_revision, trust_remote_code)
    if not apart and isinstance(lm, (str, Path, type(None))) and isinstance(rm, (str, Path, type(None))):
        share_trunk_weights(lm_model, rm_model)  # both loaded here, so no caller holds the RM's own trunk
    return lm_model, lm_tok, rm_model, rm_tok


def context_length(config) -> int | None:
    """Positions a model can attend over. Sliding-window models count only their window: the decoders pass
    full-attention masks, which equal the model's own attention only inside the window. RoBERTa-style encoders
    number positions from padding_idx + 1, so that many fewer tokens fit than position embeddings."""
    limit = next((int(getattr(config, n)) for n in ("max_position_embeddings", "n_positions", "max_sequence_length")
                  if getattr(config, n, None)), None)
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True):
        limit = min(limit or window, int(window))
    if limit and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1  # RoBERTa: 514 position embeddings, 512 tokens
    return limit


_OFFSET_POSITIONS = ("roberta", "xlm-roberta")  # encoders whose position ids start at padding_idx + 1


@functools.cache
def _forward_params(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def _model_kwargs(model, kw: dict) -> dict:
    """transformers renamed `past_key_values` to `cache` in 5.2x: pass `cache` under whichever name `model` takes."""
    if "cache" in kw and "cache" not in _forward_params(type(model)):
        kw["past_key_values"] = kw.pop("cache")
    return kw


ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert", "electra")


def _check_rm_object(model) -> None:
    """A clear error for what RewardModel cannot take: a path or Hub id (a loader's job), or an object without a
    transformers config (a scorer of one's own goes in a RewardAdapter)."""
    if isinstance(model, (str, Path)):
        raise TypeError(f"the reward model is {str(model)!r}, a path or Hub id: load it with "
                        "ARGSEngine.from_pretrained(rm=...), or pass the loaded model")
    if getattr(getattr(model, "config", None), "model_type", None) is None:
        what = type(model).__name__
        if callable(model):
            raise TypeError(f"the reward model is a {what} without a transformers config: wrap a scorer that maps "
                            "(input_ids, attention_mask) to one score per row in "
                            "args_engine.models.rm_adapter.RewardAdapter(scorer, num_outputs=N) "
                            "(docs/architectures.md)")
        raise TypeError(f"unsupported reward model object {what}: pass a *ForSequenceClassification model, a "
                        "RewardAdapter, or a RewardModel")


class RewardModel(torch.nn.Module):
    """A sequence-classification RM split into its trunk and its head, so a reward can be read at any position
    (the candidates of a step) instead of only at the last non-pad token.

    Multi-objective RMs (num_labels = N > 1, ArmoRM-style) give N outputs per position; the reward is
    weights . outputs. `weights` ([N] floats) or `objective` (one output's index) set the default; a request
    may bring its own (ARGSParams.rm_weights). A single-output RM's reward is its output."""

    def __init__(self, model, weights=None, objective: int | None = None):
        super().__init__()
        from .rm_adapter import RewardAdapter
        _check_rm_object(model)
        # A RewardAdapter (a scorer with head code of its own, ArmoRM-style) reads each candidate's whole text, as
        # an encoder does: one score per text, no position-wise head for candidates to share a prefix cache.
        self.is_adapter = isinstance(model, RewardAdapter)
        num_labels = getattr(model.config, "num_labels", None)
        # Decoder-only classifiers (Llama, GPT-2, OPT, Mistral, Qwen2, ...) put a `score` head on the last token:
        # a reward at any position, so candidates share the prefix cache. Encoder classifiers (BERT, RoBERTa,
        # DeBERTa-v2: a classifier on a pooled first token) read each candidate's whole text (decoding/bridge.py).
        head = None if self.is_adapter else getattr(model, "score", None)
        self.is_encoder = self.is_adapter or not isinstance(head, torch.nn.Linear)
        if self.is_encoder and not self.is_adapter and model.config.model_type not in ENCODER_TYPES:
            raise ValueError(f"{type(model).__name__} has no `score` head on the last token and is not an encoder "
                             f"classifier ({', '.join(ENCODER_TYPES)}); use a *ForSequenceClassification model, or, "
                             "for a reward model with a head of its own (ArmoRM-style custom code), wrap it: "
                             "args_engine.models.rm_adapter.RewardAdapter(model, output='score') "
                             "(docs/architectures.md)")
        self.model, self.head = model, None if self.is_encoder else head
        self.trunk = None if self.is_adapter else model.base_model
        self.config = model.config
        self.num_objectives = num_labels if self.is_encoder else head.out_features
        if num_labels != self.num_objectives:
            raise ValueError(f"num_labels ({num_labels}) != the score head's outputs ({self.num_objectives})")
        self.weights = self._default_weights(weights, objective)  # [N] float64, or None for one output

    @classmethod
    def wrap(cls, rm, weights=None, objective: int | None = None) -> "RewardModel":
        """rm: a *ForSequenceClassification model, a RewardAdapter (a scorer with head code of its own), or a
        RewardModel (kept as is unless weights are given)."""
        if isinstance(rm, RewardModel):
            if weights is None and objective is None:
                return rm
            rm = rm.model
        return cls(rm, weights, objective)

    def _default_weights(self, weights, objective) -> torch.Tensor | None:
        n = self.num_objectives
        if weights is not None and objective is not None:
            raise ValueError("give rm_weights or rm_objective, not both")
        if objective is not None:
            if isinstance(objective, bool) or not isinstance(objective, int) or not 0 <= objective < n:
                raise ValueError(f"rm_objective must be an output index in [0, {n}), got {objective!r}")
            weights = [1.0 if i == objective else 0.0 for i in range(n)]
        if weights is not None:
            return torch.tensor(check_rm_weights(weights, n), dtype=torch.float64)
        if n > 1:
            raise ValueError(f"the reward model has {n} outputs (multi-objective): choose one with rm_objective "
                             f"(--rm-objective i) or combine them with rm_weights (--rm-weights w1,...,w{n})")
        return None

    def row_weights(self, per_row: list, device) -> torch.Tensor | None:
        """The reward weights of each row [B, N] float64 (a request's own rm_weights, else the default), or None
        for a single-output RM."""
        if self.weights is None:
            return None
        rows = [self.weights if w is None else torch.tensor(w, dtype=torch.float64) for w in per_row]
        return torch.stack(rows).to(device) if rows else self.weights.new_zeros(0, self.num_objectives).to(device)

    def encoder_rewards(self, inputs: dict, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder RM: tokenized texts (input_ids, attention_mask, ... [n, T]) -> rewards [n]."""
        return combine_objectives(self.model(**inputs).logits, weights if weights is not None else self.weights)

    def forward_trunk(self, **kw) -> torch.Tensor:
        """Trunk forward -> last hidden states [B, T, H]."""
        return self.trunk(**_model_kwargs(self.trunk, kw)).last_hidden_state

    def rewards(self, hidden: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, ..., H] -> rewards [B, ...]. weights [B, N] (row_weights) for a multi-objective RM; None
        takes the default for every row."""
        return combine_objectives(self.head(hidden), weights if weights is not None else self.weights)


def combine_objectives(outputs: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The head's outputs [B, ..., N] -> rewards [B, ...]: the output itself when N = 1, else weights . outputs
    with weights [N] or per row [B, N] (accumulated in float64, returned in the outputs' dtype)."""
    if outputs.shape[-1] == 1 and weights is None:
        return outputs.squeeze(-1)
    if weights is None:
        raise ValueError("a multi-objective reward needs weights")
    w = weights.to(outputs.device)
    if w.dim() == 2:  # per row: [B, N] -> [B, 1, ..., 1, N]
        w = w.view(w.shape[0], *([1] * (outputs.dim() - 2)), w.shape[1])
    return (outputs.double() * w).sum(-1).to(outputs.dtype)


def shares_trunk(lm, rm_model) -> bool:
    """True when the RM's trunk has exactly the LM's trunk weights (and configuration)."""
    a, b = lm.base_model, rm_model.base_model
    if a is b:
        return True
    if next(a.parameters()).device != next(b.parameters()).device:
        return False  # one trunk cannot serve two devices
    if type(a) is not type(b) or a.config.to_dict().keys() != b.config.to_dict().keys():
        return False
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rope_theta",
            "rms_norm_eps", "max_position_embeddings", "rope_scaling", "rope_parameters", "sliding_window")
    if any(getattr(a.config, k, None) != getattr(b.config, k, None) for k in keys):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def share_trunk_weights(lm, rm_model) -> bool:
    """If the RM's trunk holds exactly the LM's trunk weights (the default RM is a head on the LM's trunk),
    make the RM use the LM's trunk module, so one copy of the weights stays in memory. -> whether it did."""
    if lm.base_model is rm_model.base_model or not shares_trunk(lm, rm_model):
        return False
    setattr(rm_model, rm_model.base_model_prefix, lm.base_model)
    return True


def next_token_logits(lm, **kw) -> torch.Tensor:
    """LM forward -> logits of the last position [B, V] (only that row goes through the LM head)."""
    kw = _model_kwargs(lm, kw)
    if "logits_to_keep" in _forward_params(type(lm)):
        kw["logits_to_keep"] = 1
    return lm(**kw).logits[:, -1]


def check_pair(lm, rm: RewardModel, tokenizer=None, rm_tokenizer=None) -> bool:
    """Check the LM; -> whether the RM must read text through the bridge (decoding/bridge.py): an encoder RM, or
    a decoder RM on another vocabulary or tokenizer."""
    if getattr(lm.config, "is_encoder_decoder", False) or not hasattr(lm, "get_output_embeddings") \
            or lm.get_output_embeddings() is None:
        raise ValueError(f"the LM must be a decoder-only causal LM with a language-model head, got "
                         f"{type(lm).__name__}")
    if rm.is_encoder:
        bridged, why = True, f"the RM is an encoder ({rm.config.model_type})"
    elif tokenizer is not None and rm_tokenizer is not None and tokenizer.get_vocab() != rm_tokenizer.get_vocab():
        bridged, why = True, "LM and RM tokenizers differ"
    else:
        lv, rv = lm.config.vocab_size, rm.config.vocab_size
        bridged, why = lv != rv, f"LM and RM vocabularies differ (LM vocab_size={lv}, RM vocab_size={rv})"
    if bridged and (tokenizer is None or rm_tokenizer is None):
        raise ValueError(f"{why}: the RM must read the text, so pass both tokenizers (tokenizer= for the LM, "
                         "rm_tokenizer= for the RM)")
    return bridged

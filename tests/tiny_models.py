"""Tiny random models and a character-level tokenizer, built offline with fixed seeds."""
from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (Gemma2ForCausalLM, Gemma2ForSequenceClassification, Gemma3ForCausalLM,
                          Gemma3TextForSequenceClassification, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, MistralForCausalLM,
                          MistralForSequenceClassification, OPTConfig, OPTForCausalLM, OPTForSequenceClassification,
                          Phi3ForCausalLM, Phi3ForSequenceClassification, PreTrainedTokenizerFast, Qwen2ForCausalLM,
                          Qwen2ForSequenceClassification, Qwen3ForCausalLM, Qwen3ForSequenceClassification)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHARS = list(string.printable[:-5]) + ["\n"]  # printable without \t\r\x0b\x0c, plus newline
VOCAB = SPECIALS + CHARS
PAD, EOS, BOS = 0, 1, 2
CHAT_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")


def char_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(family: str, num_labels: int | None = None):
    common = dict(vocab_size=len(VOCAB), pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
    if num_labels is not None:
        common["num_labels"] = num_labels
    if family == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, **common)
    if family in ("mistral", "qwen2"):  # Llama-family variants the native runner also takes (Qwen2: q/k/v bias)
        from transformers import MistralConfig, Qwen2Config
        cls = MistralConfig if family == "mistral" else Qwen2Config
        return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.2, sliding_window=None,
                   **common)
    if family == "qwen3":  # per-head q/k RMSNorm
        from transformers import Qwen3Config
        return Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.2,
                           **common)
    if family == "phi3":  # q/k/v and gate/up fused in the checkpoint
        from transformers import Phi3Config
        return Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                          sliding_window=None, **common)
    if family == "gemma2":  # (1 + w) sandwich norms, GeLU, scaled embeddings; small caps so tanh bends scores
        from transformers import Gemma2Config
        return Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=256,
                            attn_logit_softcapping=2.0, final_logit_softcapping=5.0, query_pre_attn_scalar=24,
                            initializer_range=0.2, **common)
    if family == "gemma3":  # Gemma 2's layout plus per-head q/k norms and local/global RoPE by layer
        from transformers import Gemma3TextConfig
        return Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=256,
                                layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
                                initializer_range=0.2, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2, **common)
    if family == "opt":
        return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, word_embed_proj_dim=64, init_std=0.2, **common)
    raise ValueError(family)


_LM = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel, "opt": OPTForCausalLM,
       "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM, "phi3": Phi3ForCausalLM,
       "gemma2": Gemma2ForCausalLM, "gemma3": Gemma3ForCausalLM}
_RM = {"llama": LlamaForSequenceClassification, "gpt2": GPT2ForSequenceClassification,
       "opt": OPTForSequenceClassification, "mistral": MistralForSequenceClassification,
       "qwen2": Qwen2ForSequenceClassification, "qwen3": Qwen3ForSequenceClassification,
       "phi3": Phi3ForSequenceClassification, "gemma2": Gemma2ForSequenceClassification,
       "gemma3": Gemma3TextForSequenceClassification}


def tiny_lm(family: str = "llama", seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    return _LM[family](_config(family)).to(dtype).eval()


def tiny_rm(family: str = "llama", seed: int = 1, dtype=torch.float64, num_labels: int = 1):
    torch.manual_seed(seed)
    rm = _RM[family](_config(family, num_labels=num_labels)).to(dtype).eval()
    with torch.no_grad():  # a reward scale comparable to log-prob gaps, so w matters
        head = rm.score
        head.weight.mul_(5.0 / head.weight.norm())
    return rm

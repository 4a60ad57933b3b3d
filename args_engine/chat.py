"""Prompt rendering shared by decoding and reward-model training, so the RM sees what decoding feeds it."""
from __future__ import annotations

from typing import Union

Messages = list[dict[str, str]]
Prompt = Union[str, Messages, list[int]]


def render_prompt(tokenizer, prompt: Prompt, raw: bool = False) -> list[int]:
    """Token ids for a prompt: a string (chat-formatted unless `raw`), a message list, or token ids as is."""
    if not prompt or (isinstance(prompt, str) and not prompt.strip()):
        raise ValueError("empty prompt")
    if all(isinstance(t, int) for t in prompt) and not isinstance(prompt, str):
        return list(prompt)
    if tokenizer is None:
        raise ValueError("a text prompt needs a tokenizer")
    if isinstance(prompt, str) and raw:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    # No template (e.g. a base model): plain "role: content" lines, then the assistant cue.
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def render_dialogue(tokenizer, messages: Messages, reply: str) -> list[int]:
    """Prompt rendered as for decoding, followed by the reply's tokens (no end-of-turn token), i.e. exactly
    the token sequence the RM scores when decoding has produced `reply`."""
    return render_prompt(tokenizer, messages) + tokenizer(reply, add_special_tokens=False)["input_ids"]

"""Incremental detokenization: the text of a growing response, a constant amount of work per token.

Re-decoding the whole response at every step costs O(n) per token, O(n^2) per response; at batch 64 with long
outputs that alone rivals a GPU decode step. Instead each new token decodes a short window: the tokens since the
last emitted boundary, with one token of context before it (a window that starts mid-text loses the word-leading
space a SentencePiece decoder strips, so the context's own text is subtracted). Text stops at an incomplete
multi-byte character ("\ufffd" at the end) until the bytes that complete it arrive.
"""
from __future__ import annotations


# A UTF-8 character has at most 4 bytes and a token carries at least one: a window still ending in "\ufffd"
# after this many unemitted tokens holds a genuine replacement character or invalid bytes, not a partial one.
MAX_PENDING_TOKENS = 4


class IncrementalText:
    """`text` is the decoded response so far, up to the last complete character; `append` returns what it added.
    `pending` is visible text of tokens held back with an incomplete character (stop strings may end in it)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.pending = ""
        self._prefix = 0  # window start: the context token(s) before the unemitted ones
        self._read = 0  # tokens[:_read] are in `text`

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def append(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """The response is over: emit what an incomplete character held back (as "\ufffd", like a full decode)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        context = self._decode(self.ids[self._prefix:self._read])
        window = self._decode(self.ids[self._prefix:])
        if not window.startswith(context):  # a tokenizer whose text is not additive: fall back to a full decode
            full = self._decode(self.ids)
            window, context = (full, self.text) if full.startswith(self.text) else (self.text, self.text)
        new = window[len(context):]
        incomplete = new.endswith("\ufffd") and len(self.ids) - self._read < MAX_PENDING_TOKENS
        if not final and (not new or incomplete):
            self.pending = new.rstrip("\ufffd")
            return ""  # nothing visible yet, or a character still incomplete
        self.text += new
        self.pending = ""
        self._prefix, self._read = self._read, len(self.ids)  # the emitted tokens are the next window's context
        return new

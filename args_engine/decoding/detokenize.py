"""Incremental detokenization: the text of a growing response, a constant amount of work per token.

Re-decoding the whole response at every step costs O(n) per token, O(n^2) per response; at batch 64 with long
outputs that alone rivals a GPU decode step. Instead each new token decodes a short window: the tokens since the
last emitted boundary, with one token of context before it (a window that starts mid-text loses the word-leading
space a SentencePiece decoder strips, so the context's own text is subtracted). Text stops at an incomplete
multi-byte character ("\ufffd" at the end) until the bytes that complete it arrive.
"""
from __future__ import annotations


class IncrementalText:
    """`text` is the decoded response so far, up to the last complete character; `append` returns what it added."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
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
        if not final and (len(window) <= len(context) or window.endswith("\ufffd")):
            return ""  # nothing visible yet, or a character still incomplete
        new = window[len(context):] if window.startswith(context) else self._decode(self.ids)[len(self.text):]
        self.text += new
        self._prefix, self._read = self._read, len(self.ids)  # the emitted tokens are the next window's context
        return new

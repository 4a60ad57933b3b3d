"""From chosen tokens to what a caller sees: each request's response (EOS, stop strings, length: append_token),
its text streamed as it grows (a partial character, or text that may begin a stop string, held back), its
log-probabilities, and one TokenEvent per chosen token. Host work only: never touches tensors or the caches."""
from __future__ import annotations

from dataclasses import dataclass

from .request import GenerationOutput, append_token, finish_output
from .sequence import Sequence


@dataclass
class TokenEvent:
    """One chosen token of one request. `text` is the new text since the previous event (held back while a
    multi-byte character is incomplete or it may begin a stop string); `output` is set on the request's last
    event."""

    request_id: int
    token_id: int | None  # None: the request scored its prompt and decodes nothing (max_new_tokens 0)
    reward: float | None
    text: str
    finish_reason: str | None = None
    output: GenerationOutput | None = None
    logprob: float | None = None  # with params.logprobs: the LM's log p of this token
    top_logprobs: list[tuple[int, float]] | None = None  # and its params.logprobs likeliest tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int]):
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self._sent: dict[int, int] = {}  # chars of text already streamed per request

    def add(self, seq_id: int) -> None:
        self._sent[seq_id] = 0

    def drop(self, seq_id: int) -> None:
        self._sent.pop(seq_id, None)

    def token(self, seq: Sequence, token: int, reward: float, logprobs=None) -> TokenEvent:
        """Record a chosen token on its request (which may finish it) -> its event."""
        req = seq.req
        if logprobs is not None:
            req.logprobs.append(logprobs[0])
            req.top_logprobs.append(logprobs[1])
        append_token(req, token, reward, self.tokenizer, self.eos_ids)
        return self._event(seq, token, reward, logprobs)

    def scored(self, seq: Sequence) -> TokenEvent:
        """A request that scored its prompt and decodes nothing (max_new_tokens 0) -> its one, last event."""
        seq.req.finish_reason = "length"
        return self._event(seq, None, None, None)

    def _event(self, seq: Sequence, token: int | None, reward: float | None, logprobs) -> TokenEvent:
        req, text = seq.req, ""
        output = finish_output(req, None, self.tokenizer) if req.finished else None
        if self.tokenizer is not None and seq.seq_id in self._sent:
            full = output.text if output is not None else req.detok.text
            sent = self._sent[seq.seq_id]
            end = len(full) if output is not None else len(full) - _holdback(full, req.params.stop)
            if end > sent:
                text, self._sent[seq.seq_id] = full[sent:end], end
        if output is not None:
            self.drop(seq.seq_id)
        return TokenEvent(seq.seq_id, token, reward, text, req.finish_reason, output,
                          *(logprobs if logprobs is not None else ()))


def _holdback(text: str, stop) -> int:
    """Trailing characters not to stream yet: what may begin a stop string."""
    for n in range(min(len(text), max((len(s) for s in stop or ()), default=0)), 0, -1):
        if any(s.startswith(text[-n:]) for s in stop):
            return n
    return 0

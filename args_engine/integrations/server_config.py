"""What a server exposes and how much one request may ask of it: limits, authentication, CORS, model names.
The defaults are safe for a server reachable by others; `args-engine serve` sets each from a flag."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerConfig:
    """served_model_names: the ids /v1/models lists and requests may name (others get 404); empty: the LM's
    name and "args-engine". api_key: Bearer token required on /v1/* (and on /health and /metrics too when
    auth_health_metrics); None: open. allowed_origins: CORS origins ("*" for any); empty: no CORS headers, so
    browsers refuse cross-origin calls. lenient_fields: drop (and log) request fields the server does not know
    instead of a 400, for clients that send their own; an unknown args_* field or an unsupported OpenAI field
    (fields.FIELDS) is refused even then."""

    served_model_names: list[str] = field(default_factory=list)
    default_max_tokens: int = 128
    max_k: int = 64                  # args_k: each candidate is one RM token per sequence per step
    max_choices: int = 64            # prompts x best_of (or n) of one request
    max_num_waiting: int = 256       # requests waiting for admission; beyond it HTTP 429
    max_stop: int = 4                # stop strings per request
    max_stop_chars: int = 64         # characters per stop string (the holdback search is quadratic in it)
    max_body_bytes: int = 1 << 20
    max_consecutive_failures: int = 3  # failed steps in a row before /health says 503
    api_key: str | None = None
    auth_health_metrics: bool = False
    allowed_origins: list[str] = field(default_factory=list)
    lenient_fields: bool = False

    def __post_init__(self):
        for name in ("default_max_tokens", "max_k", "max_choices", "max_num_waiting", "max_stop", "max_stop_chars",
                     "max_body_bytes", "max_consecutive_failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_choices > self.max_num_waiting:  # else a large request could never be admitted: 429 forever
            raise ValueError(f"max_choices ({self.max_choices}) must not exceed max_num_waiting "
                             f"({self.max_num_waiting})")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")

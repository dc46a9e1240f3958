"""Fusion tuned on labels, on a real index: SciFact abstracts embedded by the bundled MiniLM, written through
MilvusStore into Milvus Lite and searched by the in-memory engine. The tuning must score exactly what the query
engine serves, tune only on the train split, and its proposal must pass the gate on the test split to be
adopted — then the served build records it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rag_core.build_record import BuildRecord
from rag_core.embedding import Embedder
from rag_core.evaluation import EvalDataset, evaluate_engine, ir_metrics, judged_dataset
from rag_core.fusion_tuning import describe, fusion_grid, propose_fusion, tune_fusion
from rag_core.promotion import adopt_fusion, served_fusion
from rag_core.querylog import ServingDatabase
from rag_core.retrieval import FusionConfig
from rag_core.search.engines import IndexConnection
from rag_core.settings import bundled_model_dir
from rag_core.store import IndexBuild
from rag_serving.app import create_app
from tests.serving_server import ServerThread
from tests.support.evaluation import index_and_evaluate
from tests.support.search_index import CORPUS, Index, rows_for
from tests.support.settings import embedded_settings

pytestmark = pytest.mark.slow
# Each query paraphrases its relevant document and shares its words with a distractor about something else:
# dense finds the paraphrase, BM25 the distractor, so this corpus wants more dense weight than the default.
GROUPS = [
    ("heart attack warning signs",
     "Chest pain, shortness of breath and discomfort spreading to the left arm often precede a myocardial infarction.",
     "The rock band's new album opens with Heart Attack, and the warning signs on the tour poster became a joke."),
    ("car will not start in the cold",
     "When temperatures drop below freezing, a weak battery often fails to crank the engine of a vehicle.",
     "The cold open of the film shows a toy car; the start of the story will not surprise anyone."),
    ("how to lose weight fast",
     "Cutting daily calories and exercising more reduces body fat quickly.",
     "Fast bowlers lose pace when the weight of the ball changes; here is how the rules adapted."),
    ("dog keeps barking at night",
     "A puppy that howls and yaps after dark is often anxious or bored; evening walks calm it.",
     "Night shift guards keep a barking tally in a dog-eared logbook at the gate."),
    ("cheap flights to Europe",
     "Budget airlines sell low-cost airfare to Paris, Rome and Berlin when you book weeks ahead.",
     "The flights of stone steps in the old towns of Europe are cheap to restore, a heritage report says."),
    ("fix a leaking kitchen tap",
     "A dripping faucet usually needs a new washer; shut off the water supply before replacing it.",
     "The kitchen staff found the leaking memo about the tap dance show and tried to fix the schedule."),
    ("symptoms of the flu",
     "Influenza brings fever, muscle aches, chills and a dry cough that last about a week.",
     "The flu campaign posters list the symptoms of bad design, a critic wrote."),
    ("learn to play guitar",
     "Beginners who practise chords and strumming on a six-string instrument every day improve quickly.",
     "Learn the rules before you play: the guitar-shaped pool at the resort closes at noon."),
    ("best way to save money",
     "Putting a fixed share of each paycheck into a savings account builds wealth over time.",
     "The best way the goalkeeper could save the penalty was to guess; prize money was on the line."),
    ("plant tomatoes in the garden",
     "Sow the seedlings in sunny soil after the last frost and water the vegetables regularly.",
     "The power plant held a garden party with tomatoes, and workers joked about the plant."),
    ("stock market crash",
     "Share prices plunged as investors panicked and equities lost a fifth of their value.",
     "The market stall's stock fell in a crash when the cart tipped over."),
    ("treat a burn on the skin",
     "Cool the scalded area under running water for twenty minutes and cover it with a sterile dressing.",
     "Skin care brands burn through budgets to treat customers to free samples."),
    ("electric car battery range",
     "A fully charged EV travels about 400 kilometres before its lithium cells need recharging.",
     "The battery of tests covered the range of the electric guitar and the car stereo."),
    ("sleep problems at night",
     "Trouble falling asleep or waking too early leaves adults tired; a regular bedtime helps.",
     "Night owls have problems with the sleep mode of their laptops, a forum thread says."),
]
DATASET = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "scifact"
CURRENT = FusionConfig()  # the served default
TRAIN, TEST = range(0, 8), range(8, len(GROUPS))


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    """An index of the documents judged for 60 train and 40 test claims, plus 150 unjudged abstracts."""
    train = EvalDataset.load(DATASET, "train")
    test = EvalDataset.load(DATASET, "test")
    train_ids, test_ids = sorted(train.qrels)[:60], sorted(test.qrels)[:40]
    judged = {doc for q in train_ids for doc in train.qrels[q]} | {doc for q in test_ids for doc in test.qrels[q]}
    with gzip.open(CORPUS) as handle:
        corpus = [json.loads(line) for line in handle]
    unjudged = [record for record in corpus if record["_id"] not in judged][:150]
    records = [record for record in corpus if record["_id"] in judged] + unjudged
    embedder = Embedder(bundled_model_dir())
    vectors = embedder.encode([f"{record['title']}\n{record['text']}" for record in records])
    build = IndexBuild("all-MiniLM-L6-v2", embedder.version, embedder.dimension, "whole-abstracts")
    index = Index(tmp_path_factory.mktemp("fusion-tuning"), build=build)
    collection = index.write(rows_for(records, vectors, lambda _: "default"))
    searcher = index.memory.served().searcher
    doc_ids = searcher.doc_ids()
    slice_of = lambda data, ids: EvalDataset(  # noqa: E731
        data.name, {q: data.queries[q] for q in ids}, {q: data.qrels[q] for q in ids}
    )
    return (
        index,
        collection,
        searcher,
        embedder,
        judged_dataset(slice_of(train, train_ids), doc_ids, collection),
        judged_dataset(slice_of(test, test_ids), doc_ids, collection),
    )


def test_tuning_scores_each_fusion_as_the_query_engine_serves_it(scifact_slice):
    _, collection, searcher, embedder, train, _ = scifact_slice
    tuning = tune_fusion(searcher, embedder, train, "default", CURRENT)
    assert tuning.queries == len(train.queries) == 60
    assert {trial.fusion for trial in tuning.trials} == {CURRENT, *fusion_grid(CURRENT)}
    rrf = next(trial for trial in tuning.trials if trial.fusion.method == "rrf")
    for trial in (tuning.current, rrf, tuning.best):
        served = evaluate_engine(searcher, trial.fusion, embedder, train, ["hybrid"], "default", collection)
        assert served.modes["hybrid"].means["ndcg@10"] == pytest.approx(trial.ndcg_at_10, abs=1e-4), trial.fusion
    assert tuning.best.ndcg_at_10 >= tuning.current.ndcg_at_10
    assert len({trial.ndcg_at_10 for trial in tuning.trials}) > 1  # the weights matter on this slice
    assert "(current)" in tuning.table() and "(best)" in tuning.table()


def test_a_proposal_is_judged_on_the_test_split_and_recorded_only_when_adopted(scifact_slice):
    index, collection, searcher, embedder, train, test = scifact_slice
    with pytest.raises(ValueError, match="never on the split the gate evaluates"):
        propose_fusion(searcher, embedder, test, test, "default", CURRENT, 0.5)
    served = evaluate_engine(searcher, CURRENT, embedder, test, ["hybrid"], "default", collection)
    current = served.modes["hybrid"].means["ndcg@10"]
    proposal = propose_fusion(searcher, embedder, train, test, "default", CURRENT, current)
    if proposal.tuning.proposal() is None:
        assert proposal.proposed_ndcg is None and not proposal.decision.adopted
    else:  # the proposal's own test score decides, against the current fusion's
        assert proposal.decision.adopted == (proposal.proposed_ndcg >= current)
    # With no minimum gain the best fusion is always proposed; the test split alone then decides.
    refused = propose_fusion(searcher, embedder, train, test, "default", CURRENT, current_ndcg=2.0, min_gain=0)
    adopted = propose_fusion(searcher, embedder, train, test, "default", CURRENT, current_ndcg=0.0, min_gain=0)
    assert refused.proposed_ndcg is not None and not refused.decision.adopted
    assert "did not carry over" in refused.decision.reason
    assert adopted.decision.adopted and FusionConfig.from_json(adopted.decision.fusion) == adopted.tuning.best.fusion
    with index.connection.store() as store:
        adopt_fusion(store, collection, refused.decision)
        assert store.record(collection).fusion == ""
        adopt_fusion(store, collection, adopted.decision)
        assert store.record(collection).fusion == adopted.decision.fusion
    served_again = index.memory.served()  # what a serving process reads on its next poll
    assert served_again.collection == collection
    record = BuildRecord.from_properties(served_again.properties)
    assert served_fusion(record, CURRENT, explicit=False) == adopted.tuning.best.fusion
    assert served_fusion(record, CURRENT, explicit=True) == CURRENT  # a fusion set in the environment wins


def write_paraphrase_corpus(root: Path) -> tuple[Path, Path]:
    """(documents: the groups' documents and 40 SciFact abstracts, a BEIR dataset with train and test qrels)."""
    records = []
    for number, (_, relevant, distractor) in enumerate(GROUPS):
        records += [{"_id": f"relevant-{number}", "title": "", "text": relevant}]
        records += [{"_id": f"distractor-{number}", "title": "", "text": distractor}]
    with gzip.open(CORPUS) as handle:
        records += [json.loads(line) for _, line in zip(range(40), handle, strict=False)]
    documents, dataset = root / "documents", root / "dataset"
    (dataset / "qrels").mkdir(parents=True)
    documents.mkdir()
    (documents / "corpus.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    queries = [json.dumps({"_id": f"q{number}", "text": query}) + "\n" for number, (query, *_) in enumerate(GROUPS)]
    (dataset / "queries.jsonl").write_text("".join(queries))
    for split, numbers in (("train", TRAIN), ("test", TEST)):
        rows = "".join(f"q{number}\trelevant-{number}\t1\n" for number in numbers)
        (dataset / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return documents, dataset


def _served_ndcg(server: ServerThread, key: str, dataset: Path) -> float:
    """nDCG@10 of the API's hybrid ranking on the test queries, documents scored by their best chunk."""
    test = EvalDataset.load(dataset, "test")
    with server.client(key) as client:
        run = {}
        for query_id, text in test.queries.items():
            response = client.post("/v1/retrieve", json={"query": text, "mode": "hybrid", "top_k": 10})
            assert response.status_code == 200, response.text
            run[query_id] = {}
            for chunk in response.json()["chunks"]:
                run[query_id][chunk["doc_id"]] = max(chunk["score"], run[query_id].get(chunk["doc_id"], -1.0))
    means, _ = ir_metrics(test.qrels, run, ("ndcg@10",))
    return means["ndcg@10"]


def test_the_evaluation_asset_adopts_a_fusion_that_holds_and_the_api_serves_it(tmp_path: Path) -> None:
    documents, dataset = write_paraphrase_corpus(tmp_path)
    settings = embedded_settings(tmp_path, documents, eval_dataset_dir=dataset)
    metadata, _ = index_and_evaluate(settings)

    assert metadata["fusion_served"] == describe(CURRENT)
    assert metadata["fusion_adopted"] is True, metadata["fusion_reason"]
    assert "Tuned on dataset/train (8 queries)" in metadata["fusion_tuning"]
    adopted_ndcg = metadata["fusion_proposed_ndcg_at_10"]
    assert adopted_ndcg > metadata["served_hybrid_ndcg_at_10"]  # it holds on the test queries
    with IndexConnection.from_settings(settings).store() as store:
        record = store.record(store.alias_target())
    adopted = FusionConfig.from_json(record.fusion)
    assert describe(adopted) == metadata["fusion_proposed"] and adopted.dense_weight > CURRENT.dense_weight

    key = ServingDatabase(settings.resolved_serving_db_url).create_key("default", "fusion")
    server = ServerThread(create_app(settings)).start()
    try:  # the API serves the adopted fusion: its ranking scores exactly what the gate measured
        assert _served_ndcg(server, key, dataset) == pytest.approx(adopted_ndcg, abs=1e-4)
    finally:
        server.stop()
    configured = settings.model_copy(update={"dense_weight": CURRENT.dense_weight})  # set explicitly: it wins
    server = ServerThread(create_app(configured)).start()
    try:
        assert _served_ndcg(server, key, dataset) == pytest.approx(metadata["served_hybrid_ndcg_at_10"], abs=1e-4)
    finally:
        server.stop()

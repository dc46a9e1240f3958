"""Hybrid fusion tuned on a train split and judged on the test split, as the evaluation asset does it
(`rag_core.fusion_tuning.propose_fusion`): the grid's nDCG@10 on the train queries, then the current and the
proposed fusion on the test queries, and the gate's verdict.

Run: .venv/bin/python evals/tune_fusion.py --data-dir /tmp/scifact-index [--train-split train --test-split test]
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

DATASET = Path(__file__).parent / "datasets" / "scifact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of a build (bench_indexing --keep)")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from evals.served_build import open_build
    from rag_core.evaluation import EvalDataset, evaluate_engine, judged_dataset
    from rag_core.fusion_tuning import describe, propose_fusion

    build = open_build(args.data_dir)
    settings, collection, embedder, searcher = build.settings, build.collection, build.embedder, build.searcher
    doc_ids = searcher.doc_ids()
    train = judged_dataset(EvalDataset.load(args.dataset, args.train_split), doc_ids, collection)
    test = judged_dataset(EvalDataset.load(args.dataset, args.test_split), doc_ids, collection)
    tenant, current = settings.default_tenant, build.fusion
    served = evaluate_engine(searcher, current, embedder, test, ["hybrid"], tenant, collection)
    current_ndcg = served.modes["hybrid"].means["ndcg@10"]
    proposal = propose_fusion(searcher, embedder, train, test, tenant, current, current_ndcg)
    print(f"{collection} ({embedder.version}); tuned on {train.name} ({len(train.queries)} queries)\n")
    print(proposal.tuning.table())
    proposed = "–" if proposal.proposed_ndcg is None else f"{proposal.proposed_ndcg:.4f}"
    best = proposal.tuning.best
    print(f"\n| fusion | nDCG@10 {train.name} | nDCG@10 {test.name} ({len(test.queries)} queries) |")
    print("|---|---|---|")
    print(f"| current: {describe(current)} | {proposal.tuning.current.ndcg_at_10:.4f} | {current_ndcg:.4f} |")
    print(f"| proposed: {describe(best.fusion)} | {best.ndcg_at_10:.4f} | {proposed} |")
    print(f"\ngate: {'adopted' if proposal.decision.adopted else 'not adopted'} — {proposal.decision.reason}")


if __name__ == "__main__":
    main()

"""Build the `manpages` labelled corpus (BEIR layout) from the Debian manual pages on this machine.

A corpus of long documents with short queries, the regime where chunking can cost a dense model most
(issue 11). Each page's NAME line pairs a short description with the page: the description ("get file
status") is the query, the rest of the page (SYNOPSIS, DESCRIPTION, …) is the document, titled with the
page's names ("stat, fstat, lstat, fstatat"). Pages that share a description are all relevant to it. Queries
are split by a hash of their text, 40% train / 60% test: tune on train, report on test.

The output is vendored in evals/datasets/manpages/ (compressed); this script is how it was made, not a
run-time step. Run: .venv/bin/python evals/datasets/build_manpages.py [--documents 1200]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("1", "2", "3", "5", "7", "8")
OUTPUT = Path(__file__).parent / "manpages"
MAX_CHARS = 12_000  # a page is cut at a line boundary past this: the longest pages (bash: 300 KB) are books
# Thousands of near-identical pages of one vendor CLI installed on the build machine (not from Debian)
VENDOR_CLI_PAGES = ("gcloud", "bq.", "gsutil")
HEADER = re.compile(r"^[A-Z][A-Z0-9 ()/_-]*$")  # a section heading as man renders it: NAME, SEE ALSO, …


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def candidate_pages() -> list[Path]:
    """Real page files (no symlinks, no `.so` redirects), in a fixed pseudo-random order."""
    pages = []
    for section in SECTIONS:
        for path in sorted((MAN_ROOT / f"man{section}").glob("*.gz")):
            if path.is_symlink() or path.name.startswith(VENDOR_CLI_PAGES):
                continue
            with gzip.open(path, "rt", errors="replace") as handle:
                if handle.readline().startswith(".so "):
                    continue
            pages.append(path)
    return sorted(pages, key=lambda p: digest(str(p)))


def render(path: Path) -> str:
    env = {**os.environ, "MANWIDTH": "100", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    rendered = subprocess.run(
        ["man", "-E", "UTF-8", "-P", "cat", "-l", str(path)], capture_output=True, env=env, timeout=60
    ).stdout
    return subprocess.run(["col", "-bx"], input=rendered, capture_output=True).stdout.decode("utf-8", "replace")


def parse(path: Path, page: str) -> dict | None:
    """{_id, title, text, description} of a rendered page, or None when it has no usable NAME line."""
    lines = [line.rstrip() for line in page.splitlines()]
    body = [line for line in lines if line.strip()]
    if len(body) < 4:
        return None
    body = body[1:-1]  # the running header (stat(2) … stat(2)) and footer (package, date, page)
    sections: list[tuple[str, list[str]]] = []
    for line in body:
        if HEADER.match(line) and not line.startswith(" "):
            sections.append((line.strip(), []))
        elif sections:
            sections[-1][1].append(line.strip())
    if not sections or sections[0][0] != "NAME":
        return None
    name_line = " ".join(sections[0][1])
    parts = re.split(r"\s+(?:-|—)\s+", name_line, maxsplit=1)
    if len(parts) != 2 or len(parts[1].split()) < 3:
        return None
    names, description = parts
    text_lines: list[str] = []
    for heading, content in sections[1:]:
        text_lines += [heading, *content, ""]
    text = "\n".join(text_lines).strip()
    if len(text) > MAX_CHARS:
        text = text[: text.rfind("\n", 0, MAX_CHARS)]
    if len(text) < 200:
        return None
    section = path.parent.name.removeprefix("man")
    return {
        "_id": f"{section}/{path.name.removesuffix('.gz')}",
        "title": names.strip(),
        "text": text,
        "description": " ".join(description.split()).rstrip("."),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1200)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    pages = candidate_pages()
    documents: list[dict] = []
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(pages), 200):
            batch = pages[start : start + 200]
            for path, page in zip(batch, pool.map(render, batch), strict=True):
                parsed = parse(path, page)
                if parsed and len(documents) < args.documents:
                    documents.append(parsed)
            print(f"{min(start + 200, len(pages))}/{len(pages)} pages read, {len(documents)} kept", flush=True)
            if len(documents) >= args.documents:
                break

    by_description: dict[str, list[str]] = {}
    for document in documents:
        by_description.setdefault(document["description"].lower(), []).append(document["_id"])
    queries, qrels = [], {"train": [], "test": []}
    for description, doc_ids in sorted(by_description.items()):
        query_id = "q" + digest(description)[:10]
        split = "test" if int(digest(description), 16) % 5 < 3 else "train"
        queries.append({"_id": query_id, "text": description})
        qrels[split] += [f"{query_id}\t{doc_id}\t1" for doc_id in doc_ids]

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "qrels").mkdir(exist_ok=True)
    with gzip.open(args.output / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
        for document in documents:
            record = {key: document[key] for key in ("_id", "title", "text")}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with gzip.open(args.output / "queries.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(query, ensure_ascii=False) + "\n" for query in queries)
    for split, lines in qrels.items():
        (args.output / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    files = [
        str(MAN_ROOT / f"man{section}" / f"{page}.gz") for section, page in (d["_id"].split("/", 1) for d in documents)
    ]
    packages = subprocess.run(["dpkg-query", "-S", *files], capture_output=True, text=True).stdout
    names = sorted({line.split(":")[0] for line in packages.splitlines() if ":" in line})
    (args.output / "packages.txt").write_text("\n".join(names) + "\n")
    print(
        f"{len(documents)} documents, {len(queries)} queries "
        f"({len(qrels['train'])} train / {len(qrels['test'])} test judgements), "
        f"from {len(names)} Debian packages → {args.output}"
    )


if __name__ == "__main__":
    main()

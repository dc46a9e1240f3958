"""Search over a served build: the shared BM25 analyzer, filters, the in-memory index, the search log that
keeps it fresh, and the engines (in-memory or Milvus) the query path runs on."""

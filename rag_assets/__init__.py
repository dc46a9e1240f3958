"""The Dagster code location: documents → chunks → embeddings → the Milvus collection."""

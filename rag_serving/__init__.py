"""The FastAPI query service over the materialized index (it reads the aliased collection, never builds it)."""

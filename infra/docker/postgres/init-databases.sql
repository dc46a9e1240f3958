-- Runs once, on an empty data volume (docker-entrypoint-initdb.d). One database per consumer:
-- dagster (runs, events, schedules), mlflow (tracking store), rag (document catalog, query log, API keys).
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE rag;

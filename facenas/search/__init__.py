"""Hyper-parameter and architecture search: spaces, the study driver, executors and backends."""

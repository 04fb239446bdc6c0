"""Prefect flows and deployments composing the library; the `mavors` CLI."""

"""The top layer: Prefect flows and deployments composing the library, the `mavors` CLI, the run report."""

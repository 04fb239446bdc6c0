"""The platform's base: configuration loading, settings, the catalog, the Ray runtime, processes, paths."""

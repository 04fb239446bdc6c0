"""The platform's base, imported by every layer above: configuration loading, settings, the catalog, run
records, fault injection, the Ray runtime, child processes, paths and text measures."""

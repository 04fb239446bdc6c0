"""Data curation library: catalog, ingest, captions, perplexity/dedup, mixtures, shards, preference pairs."""

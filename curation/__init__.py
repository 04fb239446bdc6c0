"""Data curation: sources and ingest, media, captions, perplexity and dedup, held-out sets, mixtures, shards, preference pairs."""

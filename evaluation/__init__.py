"""Evaluation after every stage: Mavors as an lmms-eval model, metrics, results per stage (held-out sets: ``curation.heldout``)."""

"""Evaluation after every stage: leak-free held-out sets, metrics, Mavors as an lmms-eval model, results per stage."""

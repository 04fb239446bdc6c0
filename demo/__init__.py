"""The embedded world's inputs: a generated demo corpus and tiny random-weight checkpoints."""

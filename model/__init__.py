"""Mavors: SigLIP-initialised intra-chunk vision encoder, inter-chunk aggregator with C-RoPE, projector, Qwen2.5."""

"""Mavors (paper §3): SigLIP-initialised intra-chunk vision encoder (3D-conv chunks of F frames),
inter-chunk feature aggregator with chunk-level RoPE, MLP projector, Qwen2(.5) LLM.

Public API (other areas import only these names)::

    from model import MavorsConfig, MavorsForConditionalGeneration, MavorsProcessor

    model = MavorsForConditionalGeneration.from_pretrained(ckpt)      # from SigLIP + Qwen2.5: model.conversion
    proc = MavorsProcessor.from_pretrained(ckpt)                      # tokenizer + preprocessing settings
    conv = [{"from": "human", "value": "<video>\\nDescribe the clip."}, {"from": "gpt", "value": "A red ball."}]
    batch = proc.encode_batch([conv], media=[["clip.mp4"]])           # paths, bytes, PIL images or uint8 arrays
    loss = model(**batch).loss                                        # next-token loss on answer tokens only
    gen = proc.collate([proc.encode(conv[:1], ["clip.mp4"], add_generation_prompt=True)], padding_side="left")
    out = model.generate(**gen, max_new_tokens=32)                    # prompt + new: out[:, gen["input_ids"].shape[1]:]
    emb = model.get_inputs_embeds(**gen)                              # MavorsInputs; emb.unpadded() -> vLLM prompt_embeds
    samples = [proc.encode_messages(msgs, add_generation_prompt=True)]   # engine-style messages with parts

Batch keys: input_ids, attention_mask, labels (-100 outside assistant answers), pixel_values (packed tubelets),
chunk_grids, chunk_positions (C-RoPE ids), chunk_sequences. Submodules: model.ive, model.ifa, model.projector,
model.llm. Bad media raise `MediaError` (a ValueError with a countable ``reason`` and a ``detail`` naming the item).

The names are imported on first use, so that ``model.preprocessing`` (pure Python, where curation finds
`MediaError`) does not load torch and transformers (~7 s) with the package.
"""
import importlib

_PUBLIC = {
    "MavorsConfig": "model.configuration",
    "MavorsForConditionalGeneration": "model.modeling",
    "MavorsInputs": "model.modeling",
    "MavorsProcessor": "model.processing",
    "MediaError": "model.preprocessing",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)

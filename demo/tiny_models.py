"""Tiny random-weight checkpoints in Hugging Face format, built offline from configs.

Tests and the embedded demo use these; real runs point the same config keys at
real local checkpoints (SigLIP-so400m, Qwen2.5-7B, Qwen2-VL-72B, ...).

    mavors models make-tiny mavors-work/models

writes ``tokenizer/``, ``siglip/``, ``qwen2/`` (a Qwen2.5-style causal LM),
``qwen2vl/`` (with its processor) and ``mavors/`` (when the model package can
build it), all sharing one byte-level BPE tokenizer trained here with a ChatML
chat template. Sizes respect vLLM's CPU attention (head size 32).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]

# ChatML; content is a string or a list of {"type": "text"|"image"|"video"} parts (Qwen2-VL style).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- else -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_WORDS = (
    "a an the and of in on at to with from by is are was were it this that there what which who how "
    "video image picture frame scene clip shows show shown describe description caption question answer "
    "red green blue yellow white black purple orange gray circle square triangle rectangle shape shapes "
    "moving moves move left right up down across top bottom center background foreground small large big "
    "fast slow quickly slowly bounce bounces rotating rotate grows shrinks appears disappears first then "
    "finally while after before one two three four five many color colors count how many where direction "
    "yes no not does do did object objects person people car dog cat tree road sky water light dark bright "
    "detailed short long end begins ends continues camera view close static still time second seconds"
).split()


def tokenizer_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic English-like lines covering the demo vocabulary, digits and punctuation."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 999)))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"]))
    return lines


def make_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer with Qwen's special tokens and a ChatML template (~0.1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _ids(tok) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def siglip_config(image_size: int = 64, patch_size: int = 16):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, num_channels=3,
    )


def qwen2_config(vocab_size: int, bos: int, eos: int, pad: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=pad, torch_dtype="float32",
    )


def qwen2vl_config(vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2VLConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},  # sums to head_dim / 2 = 16
        tie_word_embeddings=True,
    )
    vision = dict(depth=2, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return Qwen2VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, torch_dtype="float32",
    )


def make_tiny(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny checkpoints under ``out_dir``; returns {name: path}. Deterministic for a seed."""
    from transformers import (
        Qwen2ForCausalLM, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
        SiglipVisionModel,
    )

    out = Path(out_dir)
    paths = {name: out / name for name in ("tokenizer", "siglip", "qwen2", "qwen2vl")}
    tok = make_tokenizer()
    ids = _ids(tok)
    vocab = len(tok)
    tok.save_pretrained(paths["tokenizer"])

    torch.manual_seed(seed)
    SiglipVisionModel(siglip_config()).save_pretrained(paths["siglip"])

    torch.manual_seed(seed + 1)
    lm = Qwen2ForCausalLM(qwen2_config(vocab, ids["<|endoftext|>"], ids["<|im_end|>"], ids["<|endoftext|>"]))
    lm.generation_config.eos_token_id = ids["<|im_end|>"]
    lm.save_pretrained(paths["qwen2"])
    tok.save_pretrained(paths["qwen2"])

    torch.manual_seed(seed + 2)
    vlm = Qwen2VLForConditionalGeneration(qwen2vl_config(vocab, ids))
    vlm.generation_config.eos_token_id = ids["<|im_end|>"]
    vlm.save_pretrained(paths["qwen2vl"])
    # Small pixel budget so tiny images/videos stay a handful of tokens.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor_kwargs = dict(image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE)
    try:
        from transformers import Qwen2VLVideoProcessor

        processor_kwargs["video_processor"] = Qwen2VLVideoProcessor(
            min_pixels=28 * 28, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2)
    except ImportError:  # transformers without video processors (needs torchvision)
        pass
    Qwen2VLProcessor(**processor_kwargs).save_pretrained(paths["qwen2vl"])

    paths["mavors"] = make_tiny_mavors(paths["siglip"], paths["qwen2"], out / "mavors", seed=seed + 3)
    return paths


# Tiny Mavors: F=4 frames/chunk and at most 8 chunks keep CPU tests fast (cluster: F=16, 64 chunks).
TINY_MAVORS = dict(frames_per_chunk=4, ifa_num_layers=2, ifa_num_heads=2, video_fps=2.0, max_chunks=8,
                   max_sub_images=4)


def make_tiny_mavors(siglip_dir: Path, qwen_dir: Path, out_dir: Path, seed: int = 3) -> Path:
    """Mavors built by `model.conversion.build_with_processor` from the tiny SigLIP + Qwen2 (with processor/tokenizer)."""
    from model.conversion import build_with_processor

    torch.manual_seed(seed)
    model, processor = build_with_processor(siglip_dir, qwen_dir, **TINY_MAVORS)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir

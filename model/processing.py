"""`MavorsProcessor`: conversations + media -> model batch (token ids, answer-only labels, packed chunks).

Takes the catalog's LLaVA-style conversations ``[{"from": "human"|"gpt"|"system", "value": "<image>\\n..."}]``
with one media source per ``<image>``/``<video>`` placeholder, or chat messages in the engine format
``[{"role": ..., "content": str | [{"type": "text"|"image"|"video", ...}]}]``.

Rendering uses the tokenizer's chat template (ChatML): each medium becomes
``<|vision_start|>`` + one ``<|image_pad|>``/``<|video_pad|>`` per visual token + ``<|vision_end|>``.
Labels are -100 everywhere except assistant content and its closing ``<|im_end|>``.

Visual layout (what `MavorsForConditionalGeneration` consumes):
- ``pixel_values`` (P, C*F*p*p): every chunk as row-major p x p x F tubelets, chunks concatenated;
- ``chunk_grids`` (N, 2): patch grid (h, w) per chunk; ``chunk_positions`` (N,): C-RoPE id;
- ``chunk_sequences`` (N,): IFA sequence id (a video is one sequence; an image's thumbnail and each
  sub-image are one sequence each, so they are aggregated independently), unique across the batch.
A video: fixed-fps frames, c_V = ceil(T_V/F) chunks, last chunk padded by repeating its last frame,
frame dropping beyond max_chunks. An image: thumbnail + Eq. 8 sub-images, each repeated F times.

``frame_rows=True`` (the training loader's, so a DataLoader worker hands the main process 1/F of an image's
floats: 5 MB instead of 81 MB at 384 px, F=16) keeps each chunk's distinct frames once instead:
``pixel_values`` (R, C*p*p), one row per patch per stored frame (patch-major, then frame), and
``chunk_frames`` (N,): frames stored per chunk (1 for an image, F for a video). The model takes either layout:
given ``chunk_frames`` its IVE rebuilds the tubelets on its device, value for value
(:func:`model.vision.frame_rows_to_tubelets`), so the F-fold copy crosses neither processes nor the bus.

    proc = MavorsProcessor.from_pretrained("mavors-work/models/mavors")    # or AutoProcessor.from_pretrained
    batch = proc.encode_batch([conv], media=[["clip.mp4"]])     # training batch (right padding, labels)
    batch = proc.encode_messages(messages, add_generation_prompt=True)   # one sample
    batch = proc.collate([s1, s2], padding_side="left")         # for generate
    proc.plan(conv, record["media"]).tokens                     # LLM tokens from shard metadata, no decoding

The Hugging Face way works too: importing this module registers the class with ``AutoProcessor`` (the export's
``processor_config.json`` names it), and ``__call__`` takes ``text=`` with one ``<|image_pad|>`` /
``<|video_pad|>`` per medium (what the chat template renders) plus ``images=`` / ``videos=``::

    from transformers import AutoProcessor
    import model.processing  # noqa: F401  (or: from model import MavorsProcessor)
    proc = AutoProcessor.from_pretrained(export)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
                                    add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=[img], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=32)
    proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from model.configuration import MavorsConfig
from model.conversation import ROLES, conversation_to_messages
from model.media import MediaSource, describe, load_image, read_video
from model.preprocessing import (check_encodable, dynamic_resolution, image_partition, plan_video, pooled_grid,
                                 resampled_frame_count)

IGNORE_INDEX = -100
PROCESSOR_FILE = "processor_config.json"  # transformers' name: AutoProcessor reads ``processor_class`` from it
LEGACY_PROCESSOR_FILE = "mavors_processor.json"  # exports written before the AutoProcessor registration
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SamplePlan:
    """A sample's size as the processor will encode it (:meth:`MavorsProcessor.plan`)."""

    tokens: int
    """LLM input tokens: text, vision start/end and one placeholder per visual token."""
    visual_tokens: int
    """Visual tokens (the IVE/IFA's work, after pooling)."""


class MavorsProcessor:
    """Preprocessing + chat rendering. Settings mirror MavorsConfig (see `from_config`)."""

    def __init__(self, tokenizer, frames_per_chunk: int = 16, patch_size: int = 14, image_size: int = 384,
                 pooling_size: int = 2, video_fps: float = 2.0, max_chunks: int = 64, max_sub_images: int = 9,
                 image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD, num_channels: int = 3):
        self.tokenizer = tokenizer
        self.frame_rows = False  # an output layout, not a setting (module docstring; :meth:`with_frame_rows`)
        self.frames_per_chunk = frames_per_chunk
        self.patch_size = patch_size
        self.image_size = image_size
        self.pooling_size = pooling_size
        self.video_fps = video_fps
        self.max_chunks = max_chunks
        self.max_sub_images = max_sub_images
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.num_channels = num_channels
        tok = tokenizer.convert_tokens_to_ids
        self.image_token_id = tok("<|image_pad|>")
        self.video_token_id = tok("<|video_pad|>")
        self.vision_start_id = tok("<|vision_start|>")
        self.vision_end_id = tok("<|vision_end|>")
        self.im_end_id = tok("<|im_end|>")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ---- construction / persistence ------------------------------------------------------------
    def settings(self) -> dict:
        return dict(frames_per_chunk=self.frames_per_chunk, patch_size=self.patch_size, image_size=self.image_size,
                    pooling_size=self.pooling_size, video_fps=self.video_fps, max_chunks=self.max_chunks,
                    max_sub_images=self.max_sub_images, image_mean=list(self.image_mean),
                    image_std=list(self.image_std), num_channels=self.num_channels)

    @classmethod
    def from_config(cls, config: MavorsConfig, tokenizer) -> "MavorsProcessor":
        vc = config.vision_config
        return cls(tokenizer, frames_per_chunk=config.frames_per_chunk, patch_size=vc.patch_size,
                   image_size=vc.image_size, pooling_size=config.pooling_size, video_fps=config.video_fps,
                   max_chunks=config.max_chunks, max_sub_images=config.max_sub_images, num_channels=vc.num_channels)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        settings = {"processor_class": type(self).__name__, **self.settings()}
        (path / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "MavorsProcessor":
        """Load a saved processor; keyword arguments that name a setting override it, the others (what
        ``AutoProcessor`` passes on: revision, trust_remote_code, ...) are ignored (local folders only)."""
        from transformers import AutoTokenizer

        path = Path(path)
        settings_file = next((path / f for f in (PROCESSOR_FILE, LEGACY_PROCESSOR_FILE) if (path / f).exists()), None)
        if settings_file is None:
            raise FileNotFoundError(f"{path / PROCESSOR_FILE} missing: not a Mavors processor directory")
        saved = json.loads(settings_file.read_text())
        saved.pop("processor_class", None)
        settings = {**saved, **{k: v for k, v in kwargs.items() if k in saved}}
        return cls(AutoTokenizer.from_pretrained(path, trust_remote_code=False), **settings)

    def with_frame_rows(self) -> "MavorsProcessor":
        """This processor emitting the frame-row layout (module docstring): what a loader's workers should use."""
        proc = copy.copy(self)
        proc.frame_rows = True
        return proc

    # ---- visual inputs -------------------------------------------------------------------------
    def _to_tensor(self, frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """uint8 (H, W, 3) -> normalized float (3, h, w) at size=(w, h), bicubic with antialiasing."""
        # a copy, not a view: decoded frames are often read-only buffers (PyAV planes, Arrow columns), which
        # torch.from_numpy wraps with a warning; the float conversion copies anyway
        x = torch.tensor(np.ascontiguousarray(frame), dtype=torch.float32).permute(2, 0, 1)[None]  # (1, 3, H, W)
        if (x.shape[-1], x.shape[-2]) != size:
            x = F.interpolate(x, size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0, 255)[0] / 255.0
        mean = torch.tensor(self.image_mean)[:, None, None]
        std = torch.tensor(self.image_std)[:, None, None]
        return (x - mean) / std

    def to_tubelets(self, frames: torch.Tensor) -> torch.Tensor:
        """One chunk (F, C, H, W) -> (h*w, C*F*p*p), row-major patches (the IVE's packed layout)."""
        f, c, hh, ww = frames.shape
        p = self.patch_size
        h, w = hh // p, ww // p
        x = frames[:, :, : h * p, : w * p].reshape(f, c, h, p, w, p)
        return x.permute(2, 4, 1, 0, 3, 5).reshape(h * w, c * f * p * p)

    def to_frame_rows(self, frames: torch.Tensor) -> torch.Tensor:
        """One chunk's distinct frames (k, C, H, W) -> (h*w*k, C*p*p): per row-major patch, its k frames' pixels."""
        k, c, hh, ww = frames.shape
        p = self.patch_size
        h, w = hh // p, ww // p
        x = frames[:, :, : h * p, : w * p].reshape(k, c, h, p, w, p)
        return x.permute(2, 4, 0, 1, 3, 5).reshape(h * w * k, c * p * p)

    def _chunk(self, frames: torch.Tensor) -> tuple[torch.Tensor, int]:
        """A chunk's pixel tensor in this processor's layout, and its stored frame count: ``frames`` (k, C, H, W)
        are its distinct frames (k = 1 for an image, repeated F times as tubelets; k = F for a video)."""
        if self.frame_rows:
            return self.to_frame_rows(frames), frames.shape[0]
        return self.to_tubelets(frames.expand(self.frames_per_chunk, -1, -1, -1)), self.frames_per_chunk

    def image_chunks(self, source: MediaSource, name: str) -> list[torch.Tensor]:
        """Thumbnail then sub-images (row-major), each a normalized (3, h, w) frame."""
        rgb = load_image(source, name)
        height, width = rgb.shape[:2]
        plan = image_partition(width, height, self.image_size, self.patch_size, self.max_sub_images, name)
        frames = [self._to_tensor(rgb, plan.thumbnail)]
        if plan.grid:
            m, n = plan.grid
            sw, sh = plan.sub_image
            whole = self._to_tensor(rgb, (m * sw, n * sh))  # resize once, then cut the m x n grid
            frames += [whole[:, r * sh:(r + 1) * sh, c * sw:(c + 1) * sw] for r in range(n) for c in range(m)]
        return frames

    def encode_media(self, kind: str, source: MediaSource, name: str) -> dict:
        """One image or video -> tubelets per chunk, grids, positions, sequence index per chunk, tokens."""
        f, p = self.frames_per_chunk, self.patch_size
        if kind == "image":
            frames = self.image_chunks(source, name)
            tubelets, stored = zip(*(self._chunk(fr[None]) for fr in frames))
            grids = [(fr.shape[1] // p, fr.shape[2] // p) for fr in frames]
            positions = [0] * len(frames)
            sequences = list(range(len(frames)))  # each sub-image aggregated on its own
        elif kind == "video":
            size: dict[str, tuple[int, int]] = {}

            def convert(frame: np.ndarray) -> torch.Tensor:
                if "wh" not in size:
                    h0, w0 = frame.shape[:2]
                    check_encodable("video", w0, h0, p, name)
                    size["wh"] = dynamic_resolution(w0, h0, self.image_size, p)
                return self._to_tensor(frame, size["wh"])

            frames, plan = read_video(source, self.video_fps, f, self.max_chunks, convert, name)
            video = torch.stack(frames)  # (c_V*F, 3, H, W)
            tubelets, stored = zip(*(self._chunk(video[i:i + f]) for i in range(0, video.shape[0], f)))
            grids = [(video.shape[2] // p, video.shape[3] // p)] * len(tubelets)
            positions = list(plan.chunk_positions)
            sequences = [0] * len(tubelets)
        else:
            raise ValueError(f"unknown media kind {kind!r}")
        return dict(tubelets=list(tubelets), frames=list(stored), grids=grids, positions=positions,
                    sequences=sequences, n_tokens=self.grid_tokens(grids))

    def grid_tokens(self, grids: list[tuple[int, int]]) -> int:
        """Visual tokens of chunks with these patch grids (h, w), after pooling."""
        return sum(a * b for a, b in (pooled_grid(h, w, self.pooling_size) for h, w in grids))

    def planned_media(self, kind: str, meta: dict, name: str) -> dict:
        """One medium's visual tokens from its shard metadata, without decoding (:func:`media_grids`)."""
        return {"n_tokens": self.grid_tokens(media_grids(kind, meta, self, name))}

    # ---- text ----------------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_messages(self, messages: list[dict], add_generation_prompt: bool = False,
                        name: str = "sample") -> dict:
        """One sample: input_ids, attention_mask, labels (L,) and its visual tensors (unbatched)."""
        return self._sample(*self._render(messages, add_generation_prompt, name, self.encode_media))

    def plan(self, conversation: list[dict], media: list[dict], name: str = "sample") -> "SamplePlan":
        """LLM input tokens of a LLaVA-style sample, visual tokens included, from its media's metadata (a shard
        record's ``media`` entries) before any decoding: what :meth:`encode` would make, for token budgets and
        for balancing vision work across ranks. Same rendering as :meth:`encode`; media sizes by
        :meth:`planned_media`."""
        kinds = [m.get("kind") for m in media]
        ids, _, visual = self._render(conversation_to_messages(conversation, media, name, kinds), False, name,
                                      self.planned_media)
        return SamplePlan(tokens=len(ids), visual_tokens=sum(v["n_tokens"] for v in visual))

    def _render(self, messages: list[dict], add_generation_prompt: bool, name: str, media_fn):
        """ChatML ids, labels and per-medium items (``media_fn(kind, source, name)``, with ``n_tokens``)."""
        ids: list[int] = []
        labels: list[int] = []
        visual: list[dict] = []

        def emit(tokens: list[int], trained: bool) -> None:
            ids.extend(tokens)
            labels.extend(tokens if trained else [IGNORE_INDEX] * len(tokens))

        n_media = 0
        for message in messages:
            role = ROLES.get(message["role"], message["role"])
            trained = role == "assistant"
            emit(self._text_ids(f"<|im_start|>{role}\n"), False)
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                kind = part["type"]
                if kind == "text":
                    emit(self._text_ids(part["text"]), trained)
                    continue
                source = part.get(kind)
                n_media += 1
                item = media_fn(kind, source, f"{name}: {describe(source, f'{kind} #{n_media}')}")
                pad = self.image_token_id if kind == "image" else self.video_token_id
                emit([self.vision_start_id] + [pad] * item["n_tokens"] + [self.vision_end_id], False)
                visual.append(item)
            emit([self.im_end_id], trained)
            emit(self._text_ids("\n"), False)
        if add_generation_prompt:
            emit(self._text_ids("<|im_start|>assistant\n"), False)
        return ids, labels, visual

    def encode(self, conversation: list[dict], media: list[MediaSource] | None = None,
               add_generation_prompt: bool = False, name: str = "sample") -> dict:
        """One LLaVA-style conversation (catalog format) -> one sample (see `encode_messages`)."""
        return self.encode_messages(conversation_to_messages(conversation, media, name),
                                    add_generation_prompt, name)

    def _sample(self, ids: list[int], labels: list[int], visual: list[dict]) -> dict:
        tub = [t for item in visual for t in item["tubelets"]]
        sequences, offset = [], 0
        for item in visual:
            sequences += [offset + s for s in item["sequences"]]
            offset += max(item["sequences"]) + 1
        sample = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": torch.cat(tub) if tub else torch.zeros(0, self.row_size),
            "chunk_grids": torch.tensor([g for item in visual for g in item["grids"]], dtype=torch.long).view(-1, 2),
            "chunk_positions": torch.tensor([q for item in visual for q in item["positions"]], dtype=torch.long),
            "chunk_sequences": torch.tensor(sequences, dtype=torch.long),
        }
        if self.frame_rows:
            sample["chunk_frames"] = torch.tensor([k for item in visual for k in item["frames"]], dtype=torch.long)
        return sample

    @property
    def tubelet_size(self) -> int:
        return self.num_channels * self.frames_per_chunk * self.patch_size ** 2

    @property
    def row_size(self) -> int:
        """Values per row of ``pixel_values``: a tubelet's, or with ``frame_rows`` one frame's patch."""
        return self.tubelet_size // self.frames_per_chunk if self.frame_rows else self.tubelet_size

    # ---- batching ------------------------------------------------------------------------------
    def collate(self, samples: list[dict], padding_side: str = "right") -> dict:
        """Pad token tensors (pad id / mask 0 / labels -100), concatenate the visual tensors and make
        chunk_sequences unique across the batch. Use padding_side="left" for batched generation."""
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        width = max(s["input_ids"].shape[0] for s in samples)
        out = {k: [] for k in ("input_ids", "attention_mask", "labels")}
        for s in samples:
            n = width - s["input_ids"].shape[0]
            for key, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
                pad = s[key].new_full((n,), fill)
                out[key].append(torch.cat([pad, s[key]] if padding_side == "left" else [s[key], pad]))
        batch = {k: torch.stack(v) for k, v in out.items()}
        sequences, offset = [], 0
        for s in samples:
            if s["chunk_sequences"].numel():
                sequences.append(s["chunk_sequences"] + offset)
                offset += int(s["chunk_sequences"].max()) + 1
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
        batch["chunk_grids"] = torch.cat([s["chunk_grids"] for s in samples]).view(-1, 2)
        batch["chunk_positions"] = torch.cat([s["chunk_positions"] for s in samples])
        batch["chunk_sequences"] = torch.cat(sequences) if sequences else torch.zeros(0, dtype=torch.long)
        if "chunk_frames" in samples[0]:
            batch["chunk_frames"] = torch.cat([s["chunk_frames"] for s in samples])
        return batch

    def encode_batch(self, conversations: list[list[dict]], media: list[list[MediaSource]] | None = None,
                     add_generation_prompt: bool = False, padding_side: str = "right") -> dict:
        """Batch of LLaVA-style conversations, media[i] listing sample i's media in placeholder order."""
        media = media or [[] for _ in conversations]
        samples = [self.encode(c, m, add_generation_prompt, name=f"sample {i}")
                   for i, (c, m) in enumerate(zip(conversations, media))]
        return self.collate(samples, padding_side)

    # ---- the Hugging Face processor interface ---------------------------------------------------
    def __call__(self, text: str | list[str] | None = None, images: list | None = None, videos: list | None = None,
                 return_tensors: str | None = "pt", padding_side: str | None = None, **_: object):
        """``processor(text=, images=, videos=, return_tensors="pt")`` as transformers' processors take it.

        Each ``<|image_pad|>`` / ``<|video_pad|>`` in ``text`` (one per medium, as the chat template writes
        it) becomes the medium's visual tokens; ``images`` / ``videos`` list the media in order of their
        placeholders over the whole batch (a list per text is accepted too). Returns a ``BatchFeature`` with
        input_ids, attention_mask and the visual tensors, ready for the model's forward and generate (no
        labels: training batches come from :meth:`encode_batch`). Padding: ``padding_side``, else the tokenizer's.
        """
        from transformers import BatchFeature

        if text is None:
            raise ValueError("MavorsProcessor needs text= (with one <|image_pad|>/<|video_pad|> per medium)")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r}: MavorsProcessor returns torch tensors ('pt')")
        texts = [text] if isinstance(text, str) else list(text)
        queues = {"image": _flat_media(images), "video": _flat_media(videos)}
        samples = [self._encode_text(t, queues, name=f"text {i}") for i, t in enumerate(texts)]
        left = {kind: len(q) for kind, q in queues.items() if q}
        if left:
            raise ValueError("more media than placeholders in the texts: "
                             + ", ".join(f"{n} {kind}(s) left over" for kind, n in left.items()))
        batch = self.collate(samples, padding_side or self.tokenizer.padding_side)
        del batch["labels"]
        return BatchFeature(batch)

    def _encode_text(self, text: str, queues: dict[str, list], name: str) -> dict:
        """One text with placeholder tokens -> one sample (labels all ignored), consuming media from ``queues``."""
        ids: list[int] = []
        visual: list[dict] = []
        for piece in _PLACEHOLDERS.split(text):
            kind = _PLACEHOLDER_KIND.get(piece)
            if kind is None:
                ids += self._text_ids(piece) if piece else []
                continue
            if not queues[kind]:
                raise ValueError(f"{name}: more {piece} placeholders than {kind}s given")
            source = queues[kind].pop(0)
            item = self.encode_media(kind, source, f"{name}: {describe(source, f'{kind} #{len(visual) + 1}')}")
            ids += [self.image_token_id if kind == "image" else self.video_token_id] * item["n_tokens"]
            visual.append(item)
        return self._sample(ids, [IGNORE_INDEX] * len(ids), visual)

    def apply_chat_template(self, conversation: list[dict], **kwargs):
        """The tokenizer's chat template (ChatML; image/video parts render as their placeholder spans)."""
        return self.tokenizer.apply_chat_template(conversation, **kwargs)

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)



def media_grids(kind: str, meta: dict, settings, name: str = "media") -> list[tuple[int, int]]:
    """Patch grid (h, w) of every chunk one medium becomes, from its metadata (``width``, ``height``; a video's
    ``n_frames``/``fps`` or ``duration_s`` at the fixed fps), by the rules :meth:`MavorsProcessor.encode_media`
    follows, without decoding. ``settings``: a :class:`MavorsProcessor` or a :class:`MavorsConfig` (both carry
    ``image_size``, ``patch_size``, ``frames_per_chunk``, ``video_fps``, ``max_chunks``, ``max_sub_images``).
    The vision encoder's work is the sum of h*w (patches before pooling); the LLM's visual tokens are the
    pooled grids' (:func:`model.preprocessing.pooled_grid`): token budgets and capacity planning use both."""
    p = settings.patch_size
    try:
        width, height = int(meta["width"]), int(meta["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{name}: media metadata without width/height ({meta}); cannot plan tokens") from None
    if kind == "image":
        plan = image_partition(width, height, settings.image_size, p, settings.max_sub_images, name)
        (tw, th), grids = plan.thumbnail, []
        if plan.grid:
            (m, n), (sw, sh) = plan.grid, plan.sub_image
            grids = [(sh // p, sw // p)] * (m * n)
        return [(th // p, tw // p)] + grids
    if kind != "video":
        raise ValueError(f"unknown media kind {kind!r}")
    check_encodable("video", width, height, p, name)
    w, h = dynamic_resolution(width, height, settings.image_size, p)
    if meta.get("n_frames") and meta.get("fps"):
        duration = int(meta["n_frames"]) / float(meta["fps"])  # what read_video measures: n frame steps
    elif meta.get("duration_s") is not None:
        duration = float(meta["duration_s"])
    else:
        raise ValueError(f"{name}: video metadata without n_frames/fps or duration_s ({meta}); cannot plan tokens")
    chunks = len(plan_video(resampled_frame_count(duration, settings.video_fps), settings.frames_per_chunk,
                            settings.max_chunks, name).chunk_positions)
    return [(h // p, w // p)] * chunks


_PLACEHOLDER_KIND = {"<|image_pad|>": "image", "<|video_pad|>": "video"}
_PLACEHOLDERS = re.compile("(" + "|".join(re.escape(p) for p in _PLACEHOLDER_KIND) + ")")


def _flat_media(media: list | None) -> list:
    """The media of a processor call in placeholder order: a flat list, or one list per text, flattened."""
    if media is None:
        return []
    if not isinstance(media, (list, tuple)):
        return [media]
    return [m for entry in media for m in (entry if isinstance(entry, (list, tuple)) else [entry])]


def _register_auto_class() -> None:
    """``AutoProcessor.from_pretrained(export)`` returns a MavorsProcessor once this module is imported (no remote
    code): the export's processor_config.json names the class, the registration maps the config to it."""
    from transformers import AutoProcessor

    AutoProcessor.register(MavorsConfig, MavorsProcessor, exist_ok=True)


_register_auto_class()

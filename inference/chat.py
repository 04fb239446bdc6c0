"""Rendering a conversation for a model: prompt text, media, and which tokens belong to whom.

All backends render through here, so a prompt is the same token sequence in
transformers, vLLM and the Mavors engine:

- ``render`` applies the checkpoint's chat template (media parts become the
  template's placeholders) and records the character span of every text piece, so
  scoring can mask the tokens of chosen roles;
- ``token_mask`` turns those spans into a per-token mask using the tokenizer's
  offsets; ``expand_mask`` carries it over to a processor's sequence in which each
  media placeholder token was repeated once per visual token;
- ``decode_completion`` turns generated ids into a :class:`Completion` the same way
  for every backend (EOS counted but not shown, text cut at the first stop string);
- ``load_image`` / ``load_video`` turn paths into PIL images / ``(T, H, W, 3)``
  uint8 frames (uniformly sampled; only those frames are decoded); ``media_payload`` /
  ``payload_media`` carry them as ``.npy`` bytes from a CPU decode stage to the engines.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.types import ChatRequest, Completion, EngineError

_SENTINEL = "\x00{}\x00"  # stands in for text piece k while the template renders


@dataclass(frozen=True)
class RenderedChat:
    """A conversation rendered by the chat template.

    ``spans``: ``(start, end, role)`` character ranges of every text piece of every message.
    ``media``: ``[("image"|"video", value)]`` in placeholder order.
    """

    text: str
    spans: list[tuple[int, int, str]]
    media: list[tuple[str, Any]]


def _placeholder_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Messages whose text pieces are sentinels and whose media parts carry no payload."""
    pieces: list[tuple[str, str]] = []  # (text, role)
    out = []
    for message in messages:
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            pieces.append((content, role))
            out.append({"role": role, "content": _SENTINEL.format(len(pieces) - 1)})
            continue
        parts = []
        for part in content:
            if part["type"] == "text":
                pieces.append((part["text"], role))
                parts.append({"type": "text", "text": _SENTINEL.format(len(pieces) - 1)})
            elif part["type"] in ("image", "video"):
                parts.append({"type": part["type"]})
            else:
                raise EngineError(f"unknown content part type {part['type']!r}")
        out.append({"role": role, "content": parts})
    return out, pieces


def render(template_owner: Any, request: ChatRequest, *, add_generation_prompt: bool,
           modalities: tuple[str, ...] | list[str] = ("text", "image", "video")) -> RenderedChat:
    """Apply ``template_owner.apply_chat_template`` (a tokenizer or processor) and locate every text piece.

    A request carrying media outside ``modalities`` (what the engine accepts) is refused here.

    The template renders sentinels in place of the texts; substituting the texts back gives the
    prompt and the exact span of each piece. A template that rewrites content (e.g. ``| trim``)
    would break the spans, so the result is checked against a direct rendering.
    """
    for message in request.messages:
        if message.get("role") not in ("system", "user", "assistant"):
            raise EngineError(f"request {request.request_id}: unknown role {message.get('role')!r}")
    for kind, _ in request.media():
        if kind not in modalities:
            raise EngineError(f"request {request.request_id}: {kind} input, but the engine accepts only "
                              f"{list(modalities)}")
    masked, pieces = _placeholder_messages(request.messages)
    template = template_owner.apply_chat_template(masked, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
    text, spans, cursor = [], [], 0
    for k, (piece, role) in enumerate(pieces):
        sentinel = _SENTINEL.format(k)
        at = template.find(sentinel, cursor)
        if at < 0:
            raise EngineError(f"request {request.request_id}: chat template dropped or reordered message text")
        text.append(template[cursor:at])
        start = sum(len(t) for t in text)
        text.append(piece)
        spans.append((start, start + len(piece), role))
        cursor = at + len(sentinel)
    text.append(template[cursor:])
    rendered = "".join(text)
    direct = template_owner.apply_chat_template(
        [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
          [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})} for p in m["content"]]}
         for m in request.messages],
        tokenize=False, add_generation_prompt=add_generation_prompt)
    if direct != rendered:
        raise EngineError(f"request {request.request_id}: the chat template rewrites message content; "
                          "token masks cannot be located")
    return RenderedChat(rendered, spans, request.media())


def token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int, str]],
               roles: tuple[str, ...]) -> list[bool]:
    """True for tokens whose characters overlap a span of one of ``roles`` (offsets from a fast tokenizer)."""
    chosen = sorted((s, e) for s, e, role in spans if role in roles and e > s)
    mask = []
    for start, end in offsets:
        mask.append(any(start < e and s < end for s, e in chosen))
    return mask


def expand_mask(text_ids: list[int], text_mask: list[bool], full_ids: list[int]) -> list[bool]:
    """Carry a mask from the template's token ids to a processor's ids, where media placeholders repeat.

    ``full_ids`` must equal ``text_ids`` with some tokens repeated in place (one per visual token);
    the repeats are media, never scored.
    """
    out, j = [], 0
    for tid in full_ids:
        if j < len(text_ids) and tid == text_ids[j]:
            out.append(text_mask[j])
            j += 1
        elif j > 0 and tid == text_ids[j - 1] and not text_mask[j - 1]:
            out.append(False)
        else:
            raise EngineError("processor token ids do not extend the template's token ids")
    if j != len(text_ids):
        raise EngineError("processor token ids do not extend the template's token ids")
    return out


def scored_mask(tokenizer: Any, chat: RenderedChat, roles: tuple[str, ...], full_ids: list[int]) -> list[bool]:
    """The mask of ``roles``' content over ``full_ids`` (the model's prompt ids, media placeholders expanded)."""
    enc = tokenizer(chat.text, add_special_tokens=False, return_offsets_mapping=True)
    return expand_mask(enc["input_ids"], token_mask(enc["offset_mapping"], chat.spans, roles), full_ids)


def eos_token_ids(generation_config: Any, fallback: list[int] | None = None) -> set[int]:
    """The ids that end a generation: the generation config's EOS (one id or a list), else ``fallback``."""
    eos = generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else fallback or [])


def first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def decode_completion(tokenizer: Any, ids: list[int], ended_by_token: bool, stop: tuple[str, ...]) -> Completion:
    """A completion from generated ids that end at an EOS/stop token (``ended_by_token``) or anywhere.

    As vLLM reports it: the stop token counts in ``n_tokens`` and ``token_ids`` but not in the text;
    a stop string ends the text before it and the ids at the token that completed it.
    """
    text = tokenizer.decode(ids[:-1] if ended_by_token else ids, skip_special_tokens=True)
    cut = first_stop(text, stop)
    if cut is not None:
        text, ended_by_token = text[:cut], True
        ids = ids[:next(k for k in range(1, len(ids) + 1)
                        if first_stop(tokenizer.decode(ids[:k], skip_special_tokens=True), stop) is not None)]
    return Completion(text, "stop" if ended_by_token else "length", len(ids), tuple(ids))


def load_image(value: Any):
    """A PIL RGB image from a path or an image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    path = Path(value)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise EngineError(f"{path}: cannot read image ({e})") from e


def load_video(value: Any, n_frames: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames: an array as given, or ``n_frames`` sampled uniformly from a file.

    Only the sampled frames are decoded (``model.media.frames_at`` seeks to each), so a long video costs
    what its few frames cost. T is made even (the last frame repeated) because Qwen2-VL-style encoders
    group frames in pairs.
    """
    if isinstance(value, np.ndarray):
        frames = value
    else:
        from model.media import frame_index, frames_at
        from model.preprocessing import MediaError

        path = str(Path(value))
        try:
            index = frame_index(path, path)
            picks = np.linspace(0, len(index.times) - 1, num=min(n_frames, len(index.times))).round().astype(int)
            frames = np.stack(frames_at(path, index, index.offsets(picks), lambda rgb: rgb, path))  # (T, H, W, 3)
        except MediaError as e:
            raise EngineError(str(e)) from e
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise EngineError(f"video frames must be (T, H, W, 3), got {frames.shape}")
    if len(frames) % 2:
        frames = np.concatenate([frames, frames[-1:]])
    return frames.astype(np.uint8)


def media_payload(kind: str, value: Any, n_frames: int) -> bytes:
    """``.npy`` bytes of an image ``(H, W, 3)`` or of a video's ``n_frames`` sampled frames ``(T, H, W, 3)``:
    what a CPU decode stage hands to engine actors (an Arrow binary column), so engines never decode."""
    array = np.asarray(load_image(value)) if kind == "image" else load_video(value, n_frames)
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def payload_media(kind: str, payload: bytes) -> Any:
    """The value of a media part from :func:`media_payload` bytes: a PIL image, or the frames array."""
    array = np.load(io.BytesIO(payload))
    if kind == "image":
        from PIL import Image

        return Image.fromarray(array)
    return array

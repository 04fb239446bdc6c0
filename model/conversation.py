"""LLaVA-style conversations (the catalog's format) as engine-style chat messages, one definition for every
reader: the Mavors processor, perplexity scoring, the lmms-eval adapter.

    conversation_to_messages([{"from": "human", "value": "What is in <image>?"}, {"from": "gpt", "value": "A cat."}],
                             ["cat.jpg"])
    # [{"role": "user", "content": [{"type": "text", "text": "What is in "}, {"type": "image", "image": "cat.jpg"},
    #                               {"type": "text", "text": "?"}]},
    #  {"role": "assistant", "content": "A cat."}]

Pure Python (no torch), so curation workers import it cheaply.
"""
from __future__ import annotations

import re
from typing import Any

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
"""Speaker names of LLaVA-style data (and chat roles, accepted as they are) -> chat roles."""
PLACEHOLDER = re.compile(r"<(image|video)>")
"""Where a medium stands in a turn's text."""


class ConversationError(ValueError):
    """A conversation that cannot be rendered; ``reason`` is a short countable code (``bad_conversation``,
    ``placeholder_mismatch``), ``detail`` names the sample and what is wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def conversation_to_messages(conversation: list[dict], media: list[Any] | None, name: str = "sample",
                             kinds: list[str] | None = None) -> list[dict]:
    """Turns with ``<image>``/``<video>`` placeholders -> messages whose content is the text, or a list of text and
    media parts in place when the turn has media. ``media``: one source per placeholder, in order (paths, bytes,
    arrays: whatever the engine takes); ``kinds``, when known, must match the placeholders one by one."""
    media = list(media or [])
    messages: list[dict] = []
    used = 0
    for turn_no, turn in enumerate(conversation):
        speaker = turn.get("from", turn.get("role"))
        role = ROLES.get(speaker)
        if role is None:
            raise ConversationError("bad_conversation", f"{name}: turn {turn_no} has role {speaker!r}")
        value = turn.get("value") or ""
        parts: list[dict] = []
        pos = 0
        for m in PLACEHOLDER.finditer(value):
            if m.start() > pos:
                parts.append({"type": "text", "text": value[pos:m.start()]})
            kind = m.group(1)
            if used >= len(media):
                raise ConversationError("placeholder_mismatch",
                                        f"{name}: more <image>/<video> placeholders than media ({len(media)})")
            if kinds is not None and kinds[used] != kind:
                raise ConversationError("placeholder_mismatch", f"{name}: placeholder <{kind}> but the media is a "
                                                                f"{kinds[used]} ({media[used]})")
            parts.append({"type": kind, kind: media[used]})
            used += 1
            pos = m.end()
        if pos < len(value):
            parts.append({"type": "text", "text": value[pos:]})
        text_only = all(p["type"] == "text" for p in parts)
        messages.append({"role": role, "content": "".join(p["text"] for p in parts) if text_only else parts})
    if used != len(media):
        raise ConversationError("placeholder_mismatch",
                                f"{name}: {len(media) - used} media without a placeholder in the conversation")
    return messages

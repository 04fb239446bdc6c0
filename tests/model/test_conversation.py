"""model.conversation: LLaVA turns as chat messages, against messages written out by hand.

    pytest tests/model/test_conversation.py -q
"""
from __future__ import annotations

import pytest

from model.conversation import ConversationError, conversation_to_messages

CONV = [{"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Compare <image> and\n<video> now"},
        {"from": "gpt", "value": "Same."},
        {"from": "human", "value": "<image>"}]


def test_media_parts_stand_where_their_placeholders_stood_and_text_only_turns_stay_text():
    assert conversation_to_messages(CONV, ["a.jpg", "v.mp4", "b.png"], kinds=["image", "video", "image"]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image", "image": "a.jpg"},
                                     {"type": "text", "text": " and\n"}, {"type": "video", "video": "v.mp4"},
                                     {"type": "text", "text": " now"}]},
        {"role": "assistant", "content": "Same."},
        {"role": "user", "content": [{"type": "image", "image": "b.png"}]}]


def test_chat_roles_and_missing_values_are_accepted():
    assert conversation_to_messages([{"role": "user", "value": "hi"}, {"from": "gpt"}], []) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]


@pytest.mark.parametrize("media, kinds, reason, words", [
    (["a.jpg"], None, "placeholder_mismatch", "more <image>/<video> placeholders than media (1)"),
    (["a.jpg", "v.mp4", "b.png", "extra"], None, "placeholder_mismatch", "1 media without a placeholder in the conversation"),
    (["a.jpg", "v.mp4", "b.png"], ["image", "image", "image"], "placeholder_mismatch",
     "placeholder <video> but the media is a image (v.mp4)"),
])
def test_placeholders_and_media_must_agree(media, kinds, reason, words):
    with pytest.raises(ConversationError) as err:
        conversation_to_messages(CONV, media, "src/7", kinds=kinds)
    assert err.value.reason == reason and err.value.detail == f"src/7: {words}"


def test_an_unknown_speaker_is_a_bad_conversation():
    with pytest.raises(ConversationError) as err:
        conversation_to_messages([{"from": "bot", "value": "x"}], [], "src/8")
    assert (err.value.reason, err.value.detail) == ("bad_conversation", "src/8: turn 0 has role 'bot'")

"""lmms-eval task utilities for the held-out sets (rendered beside the task YAMLs by `mavors eval split`).

Scoring lives in evaluation.metrics and core.text so tests, tasks and the DPO judges share one implementation.
"""
from core.text import contains_answer, words
from evaluation.metrics import exact_match, is_too_brief, rouge_l, split_truncation

QA_MIN_WORDS = 3
"""An answer shorter than this many words counts as too brief (the Stage-2 symptom DPO fixes)."""


def doc_to_visual(doc):
    return [doc["media"]]


def doc_to_text(doc):
    return doc["question"]


def doc_to_target(doc):
    return doc["answer"]


def process_qa(doc, results):
    text, truncated = split_truncation(results[0])
    return {
        "accuracy": contains_answer(text, doc["answer"]),
        "exact_match": exact_match(text, doc["answer"]),
        "answer_words": float(len(words(text))),
        "brevity_rate": is_too_brief(text, QA_MIN_WORDS),
        "termination_rate": float(not truncated),
    }


def process_caption(doc, results):
    text, truncated = split_truncation(results[0])
    return {
        "rouge_l": rouge_l(text, doc["answer"]),
        "caption_words": float(len(words(text))),
        "termination_rate": float(not truncated),
    }

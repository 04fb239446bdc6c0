"""A small stand-in with Mavors' four named submodules, for fast unit tests of the trainer machinery.

Text tokens go through ``llm``; a fixed pseudo-visual input goes ive → ifa → projector
and is added to every token embedding, so gradients reach all four modules exactly
as in Mavors (a frozen LLM still passes gradients back to the projector).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn


class ToyMavors(nn.Module):
    def __init__(self, vocab_size: int = 64, vision: int = 16, hidden: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.ive = nn.Sequential(nn.Linear(vision, vision), nn.LayerNorm(vision))
        self.ifa = nn.Sequential(nn.Linear(vision, vision), nn.LayerNorm(vision))
        self.projector = nn.Sequential(nn.Linear(vision, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.llm = nn.ModuleDict({"embed_tokens": nn.Embedding(vocab_size, hidden),
                                  "mlp": nn.Linear(hidden, hidden), "norm": nn.LayerNorm(hidden),
                                  "lm_head": nn.Linear(hidden, vocab_size, bias=False)})
        self.register_buffer("visual", torch.randn(4, vision))  # (P, Dv) fixed pseudo-visual features

    def forward(self, input_ids, attention_mask=None):
        vis = self.projector(self.ifa(self.ive(self.visual))).mean(0)   # (H,)
        h = self.llm["embed_tokens"](input_ids) + vis                     # (B, T, H)
        h = self.llm["norm"](h + torch.tanh(self.llm["mlp"](h)))
        return SimpleNamespace(logits=self.llm["lm_head"](h))           # (B, T, V)

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "toy.pt")


def toy_loader(spec, run_dir, work_dir, source="spec"):
    """Loader for ``run_stage``: a fresh toy, or the previous stage's exported toy weights."""
    model = ToyMavors()
    if spec.init.from_stage:
        model.load_state_dict(torch.load(Path(run_dir) / spec.init.from_stage / "export" / "toy.pt"))
    return model, None

"""Hugging Face export at the end of a stage: ``save_pretrained`` of model + processor, then ``stage.json``.

    export_stage(model, processor, run_dir / "stage1" / "export", record)
    is_exported(path)    # True once stage.json is in place

Layout of ``<run dir>/<stage>/export/``:
    config.json, model.safetensors (or shards + index), generation_config.json  — the model
    processor / tokenizer files (preprocessor_config.json, tokenizer.json, chat_template.jinja, ...)
    stage.json  — spec, steps, samples, final loss, weight fingerprints (written last)

The export is written to ``export.tmp`` and renamed, so a crash never leaves a
half-written export that the chain would take for a finished stage.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

STAGE_RECORD = "stage.json"


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` holds a complete export (its ``stage.json`` exists)."""
    return (Path(path) / STAGE_RECORD).is_file()


def read_stage_record(path: str | Path) -> dict:
    return json.loads((Path(path) / STAGE_RECORD).read_text())


def fingerprint(state: dict[str, torch.Tensor], prefix: str = "") -> str:
    """sha256 over the names and bytes of a state dict's tensors (optionally those under ``prefix``)."""
    h = hashlib.sha256()
    for name in sorted(state):
        if not name.startswith(prefix):
            continue
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_fingerprints(model: torch.nn.Module) -> dict[str, str]:
    """Fingerprint of each Mavors submodule's weights (``ive``, ``ifa``, ``projector``, ``llm``)."""
    from trainers.spec import MODULES

    state = {n: p for n, p in model.named_parameters()}
    return {m: fingerprint(state, m + ".") for m in MODULES}


def export_stage(model, processor, export_dir: str | Path, record: dict) -> Path:
    """Write the export atomically; ``record`` (JSON-able) goes to ``stage.json`` with the weight fingerprints."""
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if processor is not None:
        processor.save_pretrained(tmp)
    full = {**record, "fingerprints": module_fingerprints(model)}
    (tmp / STAGE_RECORD).write_text(json.dumps(full, indent=2, default=str))
    shutil.rmtree(export_dir, ignore_errors=True)
    tmp.rename(export_dir)
    return export_dir

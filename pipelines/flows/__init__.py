"""Prefect flows that compose the library into Mavors' pipelines; they hold no data logic.

    mavors flow run curate          # ingest -> captions -> perplexity -> dedup -> mixtures -> shards
    mavors flow run train           # Stage 1 -> 1.5 -> 2 (-> DPO), each a trainer subprocess
    mavors flow run dpo             # newest Stage-2 export -> preference pairs -> shards
    mavors flow run end-to-end      # all of the above, in the paper's order
    mavors demo                     # demo data + tiny models + end-to-end under ./mavors-work

Modules: ``common`` (run records, step decorator with retries/cache keys, artifacts,
fault injection), one module per flow. :func:`configure_prefect` must run before
Prefect is first imported (Prefect reads its settings from the environment then).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def configure_prefect(work_dir: Path | str | None = None) -> None:
    """Offline-safe Prefect defaults; the user's own environment always wins.

    Without a ``PREFECT_API_URL`` flows run in Prefect's ephemeral mode (a temporary local
    server). Its state (SQLite database, persisted task results used as cache) then lives
    in ``<work_dir>/prefect`` unless ``PREFECT_HOME`` says otherwise, so a demo leaves
    nothing in the home directory. The ephemeral server needs more than Prefect's default
    20 s to start on 2 busy cores.
    """
    if work_dir is not None and not os.environ.get("PREFECT_HOME") and not os.environ.get("PREFECT_API_URL"):
        home = (Path(work_dir) / "prefect").resolve()
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself
        os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # The library logs through the standard ``logging`` module; Prefect attaches these to the run's logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "core,model,inference,curation,evaluation,trainers,demo")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if shutil.which("nvidia-smi") is None:
        # vLLM's CPU build: in-process engine and a 1 GiB KV cache. Its defaults (a worker process sized
        # at 90% of the machine's memory) fail beside the rest of the pipeline on a small machine.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

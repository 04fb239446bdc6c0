"""pipelines.console: a line per finished outermost task, nothing left by nested bars; third-party chatter off
without -v and on with it, the project's own warnings kept; summary tables never cut a name short."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from rich.console import Console
from rich.table import Table

from core import progress
from pipelines.console import RichRenderer, untruncated


def test_one_line_per_finished_step_and_none_for_its_bars():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    with progress.rendered_by(RichRenderer(console)):
        with progress.task("captions"):
            with progress.task("captions (qwen2vl-tiny)", total=12) as bar:
                bar.advance(12)
        with progress.task("hash + probe media", total=3) as bar:
            bar.advance(3)
        try:
            with progress.task("shards"):
                raise RuntimeError("disk full")
        except RuntimeError:
            pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"✓ captions  \d+\.\d s", lines[0])
    assert re.fullmatch(r"✓ hash \+ probe media \(3\)  \d+\.\d s", lines[1])
    assert re.fullmatch(r"✗ shards  \d+\.\d s", lines[2])


def test_tables_keep_every_name_whole_on_a_narrow_console():
    names = ["image_captions", "image_captions_parquet", "kinetics_like+synth"]
    table = Table(title="Ingest per source")
    for col in ("source", "items", "new", "replaced", "unchanged", "stale", "new media", "quarantined"):
        table.add_column(col)
    for name in names:
        table.add_row(name, "16", "10", "0", "0", "0", "8", "bad_json=1, decompression_bomb=1, zero_byte=2")
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=False).print(untruncated(table))
    text = out.getvalue()
    assert "…" not in text
    first_cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert [c for c in first_cells if c] == names  # whole and distinct, one line each
    assert "".join(line.split("│")[-2].strip() for line in text.splitlines() if line.startswith("│")).count(
        "decompression_bomb") == 3  # folded, not cut


QUIET_PROBE = r"""
import logging, sys, warnings
from pipelines.console import quiet
quiet(sys.argv[1] == "-v")
import tqdm
for _ in tqdm.tqdm(range(3), desc="thirdparty-bar"):
    pass
# what deepspeed.utils.logging does at import (its level, its own handler, no propagation), then its warning
ds = logging.getLogger("DeepSpeed")
ds.setLevel(logging.WARNING)
ds.propagate = False
ds.addHandler(logging.StreamHandler(sys.stderr))
ds.warning("thirdparty-deepspeed-warning")
ds.error("deepspeed-error")  # errors still show
logging.basicConfig()  # Prefect's console handler sits on the root logger like this
logging.getLogger("vllm.triton_utils.importing").warning("thirdparty-vllm-import-warning")  # before vLLM's config
exec(compile("import warnings; warnings.warn('thirdparty-python-warning', FutureWarning)", "vllm/x.py", "exec"),
     {"__name__": "vllm.x"})
exec(compile("import warnings; warnings.warn('own-warning', UserWarning)", "curation/x.py", "exec"),
     {"__name__": "curation.x"})
import os
print("env", os.environ.get("VLLM_LOGGING_LEVEL"), os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"))
"""


def _probe(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "VLLM_LOGGING", "PREFECT_LOGGING"))}
    return subprocess.run([sys.executable, "-c", QUIET_PROBE, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_quiet_by_default_third_party_output_only_with_verbose():
    quiet = _probe("")
    assert quiet.returncode == 0, quiet.stderr
    assert "thirdparty" not in quiet.stderr and "own-warning" in quiet.stderr  # ours stay visible
    assert "deepspeed-error" in quiet.stderr
    assert quiet.stdout.strip() == "env ERROR WARNING"
    loud = _probe("-v")
    assert loud.returncode == 0, loud.stderr
    for marker in ("thirdparty-bar", "thirdparty-deepspeed-warning", "thirdparty-vllm-import-warning",
                   "thirdparty-python-warning", "own-warning"):
        assert marker in loud.stderr, marker
    assert loud.stdout.strip() == "env None None"

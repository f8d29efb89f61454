"""The dataset card (``README.md``) published with a job's results: what ran, on what, with what outcome.

Its YAML header declares the ``default`` configuration (the results) and, when rows failed, an
``errors`` one, so the Hub's dataset viewer shows both.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hfqueue.sinks.shards import Shard


def render(manifest: dict[str, Any], shards: list[Shard]) -> str:
    """The card's text for a finished job, from its manifest and the shards being published."""
    import yaml

    spec = manifest["spec"]
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    if any(s.path_in_repo.startswith("errors/") for s in shards):
        configs.append({"config_name": "errors", "data_files": [{"split": "train", "path": "errors/train-*"}]})
    header = yaml.safe_dump({"configs": configs, "tags": ["hfqueue", spec["task"]]}, sort_keys=False)
    source = spec.get("dataset") or f"{manifest['rows_total']} inline rows"
    finished = manifest.get("finished_at") or manifest.get("created_at")
    date = dt.datetime.fromtimestamp(float(finished), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    revision = manifest.get("model_revision") or spec.get("revision") or "(not resolved: a local model)"
    options = json.dumps(spec.get("options") or {}, sort_keys=True)
    lines = [
        f"---\n{header}---",
        f"# Results of hfqueue job `{manifest['job_id']}`",
        "",
        "| | |",
        "|---|---|",
        f"| task | `{spec['task']}` |",
        f"| model | `{spec['model']}` |",
        f"| model revision | `{revision}` |",
        *([f"| adapter | `{spec['adapter']}` |"] if spec.get("adapter") else []),
        f"| parameters | `{options}` |",
        *([f"| resolved from the model | `{json.dumps(manifest['resolved'], sort_keys=True)}` |"]
          if manifest.get("resolved") else []),
        f"| source | `{source}`" + (f" (split `{spec['split']}`)" if spec.get("dataset") else "") + " |",
        f"| rows | {manifest['rows_total']} in, {manifest['rows_done']} results, {manifest['rows_failed']} errors"
        + (f", {manifest['rows_truncated']} cut to the model's input limit" if manifest.get("rows_truncated") else "")
        + (f", {manifest['rows_reused']} reused from earlier runs (hfqueue's result cache)"
           if manifest.get("rows_reused") else "")
        + " |",
        f"| date | {date} |",
        "",
        ("Each result row keeps its input's position in `row_idx`. Rows that failed are in the `errors` "
         "configuration with `row_idx`, `error_type` and `error`."),
        "",
    ]
    return "\n".join(lines)

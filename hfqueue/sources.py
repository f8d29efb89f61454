"""Where rows come from: resolve a spec's ``dataset`` to a :class:`Source`, open it, read row ranges.

The producer resolves and opens a source once at submit time (to check that split and column exist and
to count rows); chunk messages then carry the :class:`Source` and a row range, and each worker opens the
dataset itself. ``datasets`` memory-maps Arrow files, so reading a range does not load the whole set.
"""

from __future__ import annotations

import glob
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfqueue.core import paths
from hfqueue.core.jobs import JobSpec, Source
from hfqueue.errors import InvalidSpecError, SourceNotFoundError
from hfqueue.files import stamp

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_OPEN_CACHE: OrderedDict[str, Any] = OrderedDict()
_OPEN_CACHE_SIZE = 4


def resolve(spec: JobSpec, roots: Sequence[Path]) -> Source:
    """Classify the spec's source: inline rows, a ``save_to_disk`` folder, data files, or a Hub id / folder.

    A local folder and every data file a glob matches must lie inside ``roots`` (HFQ_INPUT_ROOTS),
    symlinks followed; otherwise :class:`~hfqueue.errors.InvalidSpecError` says where it led.
    """
    if spec.inputs is not None:
        return Source(kind="inline", columns=spec.columns or {})
    items = [spec.dataset] if isinstance(spec.dataset, str) else list(spec.dataset or [])
    for item in items:  # before anything is said of what exists there
        paths.check_local_name(item, roots, "data file" if _suffix(item) in _BUILDERS else "dataset folder")
    common = {"split": spec.split, "columns": spec.columns or {}}
    if len(items) == 1 and Path(items[0]).expanduser().is_dir():
        folder = paths.check_readable(items[0], roots, "dataset folder")
        if any((folder / m).exists() for m in _DISK_MARKERS):
            return Source(kind="disk", path=str(folder), **common)
        return Source(kind="hub", path=str(folder), config=spec.dataset_config, **common)
    suffixes = {_suffix(item) for item in items}
    if suffixes <= set(_BUILDERS) and len({_BUILDERS[s] for s in suffixes}) == 1:
        files = sorted({str(paths.check_readable(f, roots, "data file"))
                        for item in items for f in glob.glob(str(Path(item).expanduser()))})
        if not files:
            raise SourceNotFoundError(f"no data files match {spec.dataset!r}; check the path or glob", value=spec.dataset)
        return Source(kind="files", builder=_BUILDERS[suffixes.pop()], data_files=files, **common)
    if len(items) != 1 or paths.looks_local(items[0]):
        raise SourceNotFoundError(
            f"dataset {spec.dataset!r} is not a dataset folder, csv/json/jsonl/parquet files, or a Hub dataset id",
            value=spec.dataset,
        )
    return Source(kind="hub", path=items[0], config=spec.dataset_config, revision=spec.dataset_revision, **common)


def open_dataset(source: Source) -> "datasets.Dataset":
    """Open the source's split (cached per process, until a local file of it changes); :class:`SourceNotFoundError`
    names what is missing."""
    key = source.model_dump_json() + _stamp(source)
    if key in _OPEN_CACHE:
        _OPEN_CACHE.move_to_end(key)
        return _OPEN_CACHE[key]
    ds = _open(source)
    for column in source.columns.values():
        if column not in ds.column_names:
            raise SourceNotFoundError(
                f"column {column!r} not in the dataset; its columns are {ds.column_names}", value=column)
    ds = _undecoded(ds, list(source.columns.values()))
    _OPEN_CACHE[key] = ds
    if len(_OPEN_CACHE) > _OPEN_CACHE_SIZE:
        _OPEN_CACHE.popitem(last=False)
    return ds


def read_rows(source: Source, start: int, end: int) -> list[Any]:
    """Rows ``[start, end)`` in order: the column's values, or ``{field: value}`` dicts for several fields."""
    # One conversion to Python lists: `ds[column]` is a lazy column whose items cost a table lookup each
    # (0.14 s per 1,000 rows when a chunk's results are assembled).
    part = open_dataset(source).select(range(start, end)).select_columns(sorted(set(source.columns.values())))
    values = part.to_dict()
    if len(source.columns) == 1:
        return values[next(iter(source.columns.values()))]
    return [{f: values[column][i] for f, column in source.columns.items()} for i in range(len(part))]


def _undecoded(ds: "datasets.Dataset", columns: list[str]) -> "datasets.Dataset":
    """``ds`` with its Image/Audio input columns left as ``{"bytes", "path"}``.

    The task decodes them row by row, so one corrupt file fails its row, not the whole chunk, and
    audio decodes without the codecs ``datasets`` would need.
    """
    import datasets

    for column in columns:
        feature = ds.features[column]
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            ds = ds.cast_column(column, type(feature)(decode=False))
    return ds


def _stamp(source: Source) -> str:
    """The sizes and modification times of a local source's files: a data file or folder rewritten in place (rows
    appended, edited) is opened again, not read from the stale copy."""
    if source.kind == "files":
        files = [Path(f) for f in source.data_files or []]
    elif source.kind == "disk" or (source.kind == "hub" and source.path and Path(source.path).expanduser().is_dir()):
        files = sorted(p for p in Path(str(source.path)).expanduser().rglob("*") if p.is_file())  # a local folder
    else:
        return ""  # a Hub dataset: its commit, pinned at submit, is in the source
    return stamp(files)


def _open(source: Source) -> "datasets.Dataset":
    import datasets

    datasets.disable_progress_bars()
    try:
        if source.kind == "disk":
            loaded = datasets.load_from_disk(source.path)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise SourceNotFoundError(
                        f"split {source.split!r} not in {source.path}; its splits are {list(loaded)}",
                        value=source.split,
                    )
                return loaded[source.split]
            return loaded
        if source.kind == "files":
            # Data files form one split, named as the spec asks, so any split name is accepted.
            return datasets.load_dataset(source.builder, data_files={source.split: source.data_files},
                                         split=source.split)
        return datasets.load_dataset(source.path, source.config, split=source.split, revision=source.revision)
    except SourceNotFoundError:
        raise
    except Exception as exc:  # datasets raises ValueError, FileNotFoundError, DatasetNotFoundError, ...
        where = source.path or source.data_files
        raise SourceNotFoundError(f"cannot read split {source.split!r} of {where}: {exc}", value=where) from exc


def _suffix(path: str) -> str:
    return Path(path).suffix.lower()


def check_source(source: Source, roots: Sequence[Path]) -> None:
    """Every local path a resolved :class:`Source` reads from must lie inside ``roots``."""
    if source.kind == "disk" or (source.kind == "hub" and source.path and paths.looks_local(source.path)):
        if not source.path:
            raise InvalidSpecError("a dataset folder source names no folder", value=source.path)
        paths.check_readable(source.path, roots, "dataset folder")
    if source.kind == "files":
        if source.builder not in set(_BUILDERS.values()):
            known = sorted(set(_BUILDERS.values()))
            raise InvalidSpecError(f"data files builder {source.builder!r} is not one of {known}",
                                   value=source.builder)
        for file in source.data_files or []:
            if "://" in file:  # datasets would fetch it; a submitted job only ever names local files
                raise InvalidSpecError(f"data file {file!r} is not a local path", value=file)
            paths.check_readable(file, roots, "data file")

"""Which local paths a job may touch: reads inside ``HFQ_INPUT_ROOTS``, writes inside ``HFQ_OUTPUT_ROOT``.

One implementation for both ends: the producer checks a spec before anything is written, and the
worker checks each message again before it reads or writes anything, because whoever can write to
Redis can forge a message. Paths are compared after ``~`` is expanded, ``..`` is resolved and every
symlink is followed, so neither ``../`` nor a symlink inside a root leads out of it.

Hub ids (``org/name``) are not local paths: only their form is checked here (:func:`check_model_path`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from hfqueue.core.config import CACHE_FOLDER
from hfqueue.errors import InvalidSpecError, SourceNotFoundError

FIX_READ = "move it under one of them, or add its folder to HFQ_INPUT_ROOTS (a JSON list) on producer and workers"


def resolved(path: str | Path) -> Path:
    """``path`` absolute, with ``~`` expanded, ``..`` resolved and every symlink followed."""
    return Path(path).expanduser().resolve()


def inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` resolves to one of ``roots`` or somewhere below one (roots are resolved too).

    >>> inside("/srv/data/../data/x.csv", [Path("/srv/data")])
    True
    >>> inside("/srv/data/../etc/passwd", [Path("/srv/data")])
    False
    """
    target = resolved(path)
    return any(target == root or root in target.parents for root in map(resolved, roots))


def looks_local(name: str) -> bool:
    """Whether a model or dataset name means a local path rather than a Hub id.

    ``transformers`` and ``datasets`` load from disk whenever the name exists as a path, so an
    existing path counts as local even when it reads like ``org/name``.
    """
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def check_readable(path: str | Path, roots: Sequence[Path], what: str) -> Path:
    """``path`` resolved, when it lies inside ``roots``; else :class:`InvalidSpecError` saying how to fix it.

    ``what`` names the path in the message, e.g. ``"data file"`` or ``"model folder"``.
    """
    target = resolved(path)
    if not inside(target, roots):
        raise _outside(what, str(path), target, roots)
    return target


def _outside(what: str, name: str, target: Path, roots: Sequence[Path]) -> InvalidSpecError:
    allowed = ", ".join(str(resolved(r)) for r in roots) or "(none)"
    return InvalidSpecError(f"{what} {name!r} resolves to {target}, outside the input roots [{allowed}]; {FIX_READ}",
                            value=name)


def check_local_name(name: str, roots: Sequence[Path], what: str) -> None:
    """For a name that means a local path (a folder, a file, a glob): the part before any wildcard must lie inside
    ``roots``, checked before anything is said of whether the path exists, so that a caller (of the HTTP API, say)
    cannot learn what exists outside the roots from the errors."""
    if not looks_local(name):
        return
    fixed = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), Path(name).expanduser().parts))
    if fixed and not inside(Path(*fixed), roots):  # a glob: where its fixed part leads
        raise _outside(what, name, resolved(Path(*fixed)), roots)


def check_output_dir(output_root: Path, output_dir: str | Path) -> Path:
    """``output_dir`` (relative to ``output_root``, or absolute) resolved, when it lies strictly below the root."""
    root = resolved(output_root)
    target = resolved(root / Path(output_dir).expanduser())
    if target == root:
        raise InvalidSpecError("output_dir must be a folder under the output root, not the root itself",
                               value=str(output_dir))
    if inside(target, [root / CACHE_FOLDER]):
        raise InvalidSpecError(f"output_dir {str(output_dir)!r} is the result cache's folder ({CACHE_FOLDER}); give "
                               "another folder", value=str(output_dir))
    if not inside(target, [root]):
        raise InvalidSpecError(f"output_dir {str(output_dir)!r} resolves to {target}, outside the output root "
                               f"{root}; give a folder under the root, or change HFQ_OUTPUT_ROOT",
                               value=str(output_dir))
    return target


def check_model_path(model: str, roots: Sequence[Path], what: str = "model") -> None:
    """A model (or, with ``what="adapter"``, a PEFT adapter) named by a local path must exist, lie inside ``roots``
    and be a folder (an adapter's holding ``adapter_config.json``); any other name must be a well-formed Hub id.

    The producer checks a spec with it at submit time, and the worker again before it loads anything (a message
    in Redis can be forged). :class:`SourceNotFoundError` for a missing or wrong path, else :class:`InvalidSpecError`.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model).expanduser()
    if looks_local(model):
        check_local_name(model, roots, f"{what} folder")
        if not path.exists():
            raise SourceNotFoundError(f"{what} path {model!r} does not exist", value=model)
        if not path.is_dir():
            raise SourceNotFoundError(f"{what} path {model!r} is a file; give the {what}'s folder", value=model)
        if what == "adapter" and not (path / "adapter_config.json").is_file():
            raise SourceNotFoundError(f"adapter folder {model!r} holds no adapter_config.json: give a folder written "
                                      "by a PEFT model's save_pretrained", value=model)
        return
    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise InvalidSpecError(f"{what} {model!r} is neither a local folder nor a Hub {what} id: {exc}",
                               value=model) from None

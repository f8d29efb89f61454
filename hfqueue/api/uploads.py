"""Files uploaded to ``POST /v1/files``: copied to disk in blocks as they arrive, with a small metadata file
beside each (owner, name, size, purpose, time). Nothing holds a whole upload in memory."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO

from hfqueue.files import atomic_open

BLOCK = 1 << 20


class TooLarge(Exception):
    """The upload passed the size limit; nothing was kept."""


class Uploads:
    """The folder of uploaded files (``HFQ_API_FILES_DIR``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, source: BinaryIO, *, owner: str, filename: str, purpose: str, max_bytes: int) -> dict[str, Any]:
        """Copy ``source`` to a new file; return its OpenAI File object. :class:`TooLarge` past ``max_bytes``."""
        file_id = f"file-{secrets.token_hex(12)}"
        size = 0
        with atomic_open(self.folder / file_id, "wb") as out:  # TooLarge leaves nothing behind
            for block in iter(lambda: source.read(BLOCK), b""):
                size += len(block)
                if size > max_bytes:
                    raise TooLarge(f"the file is larger than {max_bytes} bytes (HFQ_API_MAX_UPLOAD_MB)")
                out.write(block)
        meta = {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed", "owner": owner}
        (self.folder / f"{file_id}.json").write_text(json.dumps(meta))
        return meta

    def meta(self, file_id: str) -> dict[str, Any] | None:
        """The metadata of an uploaded file, or None (unknown id, or not an id at all)."""
        if not file_id.startswith("file-") or not file_id[5:].isalnum():
            return None
        try:
            return json.loads((self.folder / f"{file_id}.json").read_text())
        except FileNotFoundError:
            return None

    def delete(self, file_id: str) -> None:
        """Remove an uploaded file and its metadata (the metadata first: from then on the id is unknown)."""
        (self.folder / f"{file_id}.json").unlink(missing_ok=True)
        (self.folder / file_id).unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        """Where an uploaded file's bytes are."""
        return self.folder / file_id

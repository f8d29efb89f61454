"""OpenAI-compatible ``/v1/files`` and ``/v1/batches``: the official ``openai`` client, pointed at ``hfq api``,
uploads a batch file, creates a batch, polls it and downloads its output and error files, all run on local
Hugging Face models (see :mod:`hfqueue.openai_batch`).

A batch's output and error files are served as file ids (``file-out-<batch>``, ``file-err-<batch>``) of the key
that created the batch. Files and batches of another key answer 404, as unknown ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from hfqueue.api.common import Page, client_of, errors, owner, page
from hfqueue.api.uploads import TooLarge, Uploads
from hfqueue.errors import JobNotFoundError
from hfqueue.lifecycle.batches import BatchState
from hfqueue.openai_batch import batch as batches
from hfqueue.openai_batch.files import ERRORS, OUTPUT
from hfqueue.openai_batch.handle import OpenAIBatch
from hfqueue.producer.client import Client
from hfqueue.state import owners

router = APIRouter(prefix="/v1", tags=["openai"])

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]  # openai_batch.ENDPOINTS
_OUTPUTS = {"out": OUTPUT, "err": ERRORS}
# OpenAPI links: what a stored file's or a created batch's id leads to.
_FILE_LINKS = {name: {"operationId": op, "parameters": {"file_id": "$response.body#/id"}}
               for name, op in (("GetFile", "getFile"), ("GetFileContent", "getFileContent"),
                                ("DeleteFile", "deleteFile"))}
_BATCH_LINKS = {name: {"operationId": op, "parameters": {"batch_id": "$response.body#/id"}}
                for name, op in (("GetBatch", "getBatch"), ("CancelBatch", "cancelBatch"))}


class FileObject(BaseModel):
    """OpenAI's File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class FileDeleted(BaseModel):
    """What ``client.files.delete`` gets back."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchCreate(BaseModel):
    """What ``client.batches.create`` sends."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: Endpoint
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(None, description="Up to 16 pairs; keys up to 64, values up to 512 chars.")


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None
    line: int | None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    """OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchState
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


def _uploads(request: Request) -> Uploads:
    return request.app.state.uploads  # type: ignore[no-any-return]


@router.post("/files", response_model=FileObject, operation_id="createFile",
             responses={200: {"description": "The file, stored", "links": _FILE_LINKS}, **errors(400, 413)})
def upload(request: Request, file: UploadFile = File(...),
           purpose: Literal["batch"] = Form(..., description="only 'batch': hfqueue takes batch input files"),
           who: str = Depends(owner)) -> FileObject:
    """Upload a batch input file (JSONL), streamed to disk."""
    settings = request.app.state.settings
    try:
        meta = _uploads(request).save(file.file, owner=who, filename=file.filename or "upload.jsonl",
                                      purpose=purpose, max_bytes=int(settings.api_max_upload_mb * 2**20))
    except TooLarge as exc:
        raise HTTPException(413, f"{exc}") from None
    owners.own(client_of(request).redis, who, "files", meta["id"], ttl=client_of(request).settings.job_ttl)
    return FileObject(**meta)


@router.get("/files", response_model=Page[FileObject], operation_id="listFiles", responses=errors())
def list_files(request: Request, who: str = Depends(owner), limit: int = Query(20, ge=1, le=100),
               after: str | None = Query(None)) -> Page[FileObject]:
    """This key's uploaded files, newest first."""
    ids, more = owners.page(client_of(request).redis, who, "files", limit, after)
    data = [FileObject(**m) for m in map(_uploads(request).meta, ids) if m is not None]
    return Page[FileObject](**page(data, ids, more))


@router.get("/files/{file_id}", response_model=FileObject, operation_id="getFile", responses=errors(404))
def file_info(file_id: str, request: Request, who: str = Depends(owner)) -> FileObject:
    """An uploaded file's, or a batch output file's, metadata."""
    meta, _ = _file(request, who, file_id)
    return FileObject(**meta)


@router.get("/files/{file_id}/content", response_class=FileResponse, operation_id="getFileContent", responses={
    200: {"description": "The file's bytes", "content": {"application/jsonl": {}}}, **errors(404)})
def file_content(file_id: str, request: Request, who: str = Depends(owner)) -> FileResponse:
    """The file's content: a batch input, output or error file (JSONL)."""
    meta, path = _file(request, who, file_id)
    return FileResponse(path, media_type="application/jsonl", filename=meta["filename"])


@router.delete("/files/{file_id}", response_model=FileDeleted, operation_id="deleteFile", responses=errors(404, 409))
def delete_file(file_id: str, request: Request, who: str = Depends(owner)) -> FileDeleted:
    """Delete an uploaded file (batches made from it keep running: they read it when created). A batch's output and
    error files go with the batch and cannot be deleted on their own."""
    meta, _ = _file(request, who, file_id)
    if meta["purpose"] != "batch":
        raise HTTPException(409, f"{file_id} is a batch's {meta['filename']}: it is kept with its batch")
    _uploads(request).delete(file_id)
    owners.disown(client_of(request).redis, who, "files", file_id)
    return FileDeleted(id=file_id, deleted=True)


@router.post("/batches", response_model=BatchObject, operation_id="createBatch",
             responses={200: {"description": "The batch", "links": _BATCH_LINKS}, **errors(400, 404)})
def create_batch(body: BatchCreate, request: Request, who: str = Depends(owner)) -> BatchObject:
    """Run an uploaded file's requests on local models: one job per (endpoint, model, options) group."""
    client = client_of(request)
    meta = _uploads(request).meta(body.input_file_id)
    if meta is None or meta["owner"] != who:
        raise JobNotFoundError(f"no file {body.input_file_id!r} for this API key", value=body.input_file_id)
    if meta["purpose"] != "batch":
        raise HTTPException(400, f"file {body.input_file_id} has purpose {meta['purpose']!r}, not 'batch'")
    with _uploads(request).path(body.input_file_id).open("rb") as fh:
        batch_id = batches.submit(client, fh, input_file=body.input_file_id, endpoint=body.endpoint,
                                  metadata=body.metadata, completion_window=body.completion_window, owner=who)
    owners.own(client.redis, who, "batches", batch_id, ttl=client.settings.job_ttl)
    for job in OpenAIBatch(client, batch_id).jobs():
        owners.own(client.redis, who, "jobs", job.id, ttl=client.settings.job_ttl)
    return _batch(client, batch_id)


@router.get("/batches", response_model=Page[BatchObject], operation_id="listBatches", responses=errors())
def list_batches(request: Request, who: str = Depends(owner), limit: int = Query(20, ge=1, le=100),
                 after: str | None = Query(None)) -> Page[BatchObject]:
    """This key's batches, newest first."""
    client = client_of(request)
    ids, more = owners.page(client.redis, who, "batches", limit, after)
    data = []
    for batch_id in ids:
        try:
            data.append(_batch(client, batch_id))
        except JobNotFoundError:
            continue
    return Page[BatchObject](**page(data, ids, more))


@router.get("/batches/{batch_id}", response_model=BatchObject, operation_id="getBatch", responses=errors(404))
def get_batch(batch_id: str, request: Request, who: str = Depends(owner)) -> BatchObject:
    """The batch: status, request counts, output and error file ids."""
    client = client_of(request)
    _check_batch(client, who, batch_id)
    return _batch(client, batch_id)


@router.post("/batches/{batch_id}/cancel", response_model=BatchObject, operation_id="cancelBatch",
             responses=errors(404))
def cancel_batch(batch_id: str, request: Request, who: str = Depends(owner)) -> BatchObject:
    """Cancel the batch; requests that had not run go to the error file as ``batch_cancelled``."""
    client = client_of(request)
    _check_batch(client, who, batch_id)
    OpenAIBatch(client, batch_id).cancel()
    return _batch(client, batch_id)


def _check_batch(client: Client, who: str, batch_id: str) -> None:
    if batches.batch_store(client).fields(batch_id, "owner")[0] != who:
        raise JobNotFoundError(f"no batch {batch_id!r} for this API key", value=batch_id)


def _batch(client: Client, batch_id: str) -> BatchObject:
    """The batch object, its files named by file ids instead of paths."""
    obj: dict[str, Any] = OpenAIBatch(client, batch_id).status()
    hexid = batch_id.removeprefix("batch_")
    for key, kind in (("output_file_id", "out"), ("error_file_id", "err")):
        if obj[key] is not None:
            obj[key] = f"file-{kind}-{hexid}"
    return BatchObject(**obj)


def _file(request: Request, who: str, file_id: str) -> tuple[dict[str, Any], Path]:
    """An uploaded file, or a batch's output or error file, when it belongs to ``who``; else 404."""
    uploads, client = _uploads(request), client_of(request)
    meta = uploads.meta(file_id)
    if meta is not None and meta["owner"] == who:
        return meta, uploads.path(file_id)
    kind, _, hexid = file_id.removeprefix("file-").partition("-")
    batch_id = f"batch_{hexid}"
    owner_name, folder = batches.batch_store(client).fields(batch_id, "owner", "output_dir")
    if kind in _OUTPUTS and hexid.isalnum() and owner_name == who:
        path = Path(folder or "") / _OUTPUTS[kind]
        if path.exists():
            stat = path.stat()
            return {"id": file_id, "bytes": stat.st_size, "created_at": int(stat.st_mtime), "filename": path.name,
                    "purpose": "batch_output"}, path
    raise JobNotFoundError(f"no file {file_id!r} for this API key", value=file_id)


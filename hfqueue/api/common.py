"""What every router of the API shares: the OpenAI error shape, list pages, and the dependencies that give a route
its :class:`~hfqueue.Client` and its caller's API key name. The routers and :mod:`hfqueue.api.app` import it, so
the app can import the routers without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from hfqueue.core import apikeys as keys

if TYPE_CHECKING:
    from hfqueue.producer.client import Client


class ErrorDetail(BaseModel):
    """What went wrong, and how to fix it."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error response: the OpenAI shape."""

    error: ErrorDetail


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list, newest first; ask for the next with ``after=last_id``."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


def page(data: list[T], ids: list[str], more: bool) -> dict[str, Any]:
    """The fields of a :class:`Page` of ``data``, listed from ``ids``."""
    return {"data": data, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
            "has_more": more}


def client_of(request: Request) -> Client:
    """The app's :class:`~hfqueue.Client`."""
    return request.app.state.client  # type: ignore[no-any-return]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (401 always: every route needs a key)."""
    text = {400: "The request cannot run (the message says why)", 401: "No API key, or a wrong one",
            404: "No such item for this API key", 409: "Not in a state that allows it",
            413: "Body or upload too large", 422: "Malformed request", 503: "Redis cannot be reached"}
    return {s: {"model": ErrorBody, "description": text[s]} for s in sorted({401, 422, *statuses})}


_bearer = HTTPBearer(auto_error=False, description="An API key from `hfq api-key NAME` (HFQ_API_KEYS holds its hash)")


def owner(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    """The name of the API key the request carries; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "send an API key: Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
    name = keys.owner_of(credentials.credentials, request.app.state.settings.api_keys)
    if name is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return name

"""Storage endpoints as fal clients use them (protocol §7), backed by :class:`FileStore`.

- ``POST /storage/upload/initiate`` → ``{upload_url, file_url}``; ``PUT upload_url`` with the
  bytes (no key: the URL's expiring HMAC signature is the credential).
- ``POST /storage/upload/initiate-multipart`` → the same pair; parts go to
  ``PUT {upload_url path}/{n}{query}`` (answer ``{partNumber, etag}``), then
  ``POST {upload_url path}/complete{query}`` with ``{"parts": [...]}``.
- ``POST /storage/auth/token`` → a short-lived upload token (``expires_at`` offset-aware);
  ``POST /files/upload`` with it (or a key) → ``{"access_url"}``; the Python client's
  large-file path ``POST /files/upload/multipart`` → ``{access_url, uploadId}``, parts
  ``PUT {access_url}/multipart/{uploadId}/{n}`` (``ETag`` header), ``…/complete``.
- ``GET /files/{id}/{name}``: the file with the content type it was uploaded with.

A signed upload URL is a credential for one file: it names the file, its content type, its
expiry and the key it was issued to. It writes the file once (a second PUT is 409), with
the signed content type (a PUT declaring another is refused), and stops working when its
key is revoked. Nothing issued here outlives the token that asked for it. Multipart parts
count towards ``--max-upload-bytes`` as they arrive; an upload refused for its size is
deleted at once, parts included.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import time
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import urlencode

import jwt
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from framewire.gateway import http
from framewire.gateway.http import base_url
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.storage.store import (
    FALLBACK_CONTENT_TYPE,
    AlreadyStored,
    FileStore,
    FileTooLarge,
    UploadError,
    UrlSigner,
    new_id,
    safe_name,
    same_media_type,
    valid_content_type,
    valid_key,
)

STORAGE_AUDIENCE = "framewire:storage"
STORAGE_TOKEN_TTL_S = 3600
#: Bytes buffered before one write to disk (each write is a thread hop).
WRITE_CHUNK = 1 << 20
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class InitiateRequest(BaseModel):
    content_type: str = Field(DEFAULT_CONTENT_TYPE, max_length=255)
    file_name: str | None = Field(None, max_length=1024)

    @field_validator("content_type")
    @classmethod
    def _media_type(cls, value: str) -> str:
        if not valid_content_type(value):
            raise ValueError("must be a media type such as image/png (printable ASCII, no line breaks)")
        return value


class PartRef(BaseModel):
    partNumber: int = Field(ge=1, le=10_000)  # the clients spell it so
    etag: str = ""


class CompleteRequest(BaseModel):
    parts: list[PartRef] = Field(min_length=1, max_length=10_000)


def _lifecycle_ttl(request: Request) -> float | None:
    """Seconds to keep the file, from fal's object-lifecycle headers (None: server default)."""
    for header in ("x-fal-object-lifecycle", "x-fal-object-lifecycle-preference"):
        raw = request.headers.get(header)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValueError(f"{header}: not valid JSON") from None
        seconds = value.get("expiration_duration_seconds") if isinstance(value, dict) else None
        if seconds is None:
            return None
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
            raise ValueError(f"{header}: expiration_duration_seconds must be a positive integer")
        return float(seconds)
    return None


def _not_after(expires: int, principal: Principal) -> int:
    """``expires``, but never later than the token the caller used (a key has no end)."""
    return expires if principal.expires_at is None else min(expires, principal.expires_at)


def _already_uploaded() -> JSONResponse:
    return http.error(409, "this file has already been uploaded; initiate a new upload", error_type="already_uploaded")


def _auth_error(exc: AuthError) -> JSONResponse:
    return http.error(exc.status, exc.reason)


async def _read_json(request: Request, model: type[BaseModel], limits: http.BodyLimits) -> Any:
    return model.model_validate(await http.read_json(request, limits))


async def _receive_into(
    request: Request,
    temp: IO[bytes],
    limit: int,
    read_timeout_s: float,
    on_size: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Stream the request body into ``temp`` off the loop; returns (size, md5 hex).

    :class:`FileTooLarge` past ``limit`` bytes; ``on_size(received)`` may raise it too
    (the other parts of an upload); :class:`http.BodyError` (408) on a pause over ``read_timeout_s``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FileTooLarge(limit)
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in http.body_chunks(request, read_timeout_s):
        size += len(chunk)
        if size > limit:
            raise FileTooLarge(limit)
        if on_size is not None:
            on_size(size)
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= WRITE_CHUNK:
            block = b"".join(pending)
            pending, pending_size = [], 0
            md5.update(block)
            await asyncio.to_thread(temp.write, block)
    if pending:
        block = b"".join(pending)
        md5.update(block)
        await asyncio.to_thread(temp.write, block)
    return size, md5.hexdigest()


class StorageRoutes:
    """The storage and file endpoints; see the module docstring.

    ``secret`` signs storage tokens (HS256); ``signer`` signs upload URLs.
    """

    def __init__(
        self,
        auth: Authenticator,
        files: FileStore,
        signer: UrlSigner,
        secret: bytes,
        body: http.BodyLimits,
        *,
        upload_url_expiration_s: int,
    ) -> None:
        self.auth = auth
        self.body = body
        self.files = files
        self.signer = signer
        self.secret = secret
        self.upload_url_expiration_s = upload_url_expiration_s
        # Bytes of multipart parts being received now, per upload and part number.
        self._receiving: dict[str, dict[int, int]] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/storage/upload/initiate", self.initiate, methods=["POST"]),
            Route("/storage/upload/initiate-multipart", self.initiate_multipart, methods=["POST"]),
            Route("/storage/upload/multipart/{file_id}/{name}/complete", self.signed_complete, methods=["POST"]),
            Route("/storage/upload/multipart/{file_id}/{name}/{part:int}", self.signed_part, methods=["PUT"]),
            Route("/storage/upload/{file_id}/{name}", self.signed_put, methods=["PUT"]),
            Route("/storage/auth/token", self.auth_token, methods=["POST"]),
            Route("/files/upload", self.direct_upload, methods=["POST"]),
            Route("/files/upload/multipart", self.direct_multipart, methods=["POST"]),
            Route("/files/{file_id}/{name}/multipart/{upload_id}/complete", self.direct_complete, methods=["POST"]),
            Route("/files/{file_id}/{name}/multipart/{upload_id}/{part:int}", self.direct_part, methods=["PUT"]),
            Route("/files/{file_id}/{name}", self.serve_file, methods=["GET", "HEAD"]),
        ]

    def _principal(self, request: Request) -> Principal:
        """A key/token as anywhere else, or a storage token from ``/storage/auth/token``."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if self.auth.enabled and scheme.lower() == "bearer" and value.strip():
            try:
                claims = jwt.decode(value.strip(), self.secret, algorithms=["HS256"], audience=STORAGE_AUDIENCE)
            except jwt.InvalidTokenError:
                pass  # maybe a realtime token: let the authenticator decide
            else:
                key = self.auth.subject(str(claims["sub"]))
                if key is None:  # revoking a key ends its storage tokens too
                    raise AuthError(401, "the key this token was issued for has been revoked")
                return Principal(key.key_id, limits=key.limits, expires_at=int(claims["exp"]))
        return self.auth.request(request.headers)

    def _signed_query(
        self, kind: str, file_id: str, name: str, content_type: str, ttl: float | None, principal: Principal
    ) -> str:
        expires = _not_after(int(time.time()) + self.upload_url_expiration_s, principal)
        ttl_text = "" if ttl is None else str(int(ttl))
        key = principal.key_id if self.auth.enabled else ""
        signature = self.signer.sign(kind, file_id, name, content_type, ttl_text, str(expires), key)
        query = {"content_type": content_type, "ttl": ttl_text, "expires": str(expires), "key": key}
        return urlencode({**query, "signature": signature})

    def _check_signature(self, request: Request, kind: str, file_id: str, name: str) -> tuple[str, float | None]:
        """Verify a signed upload URL; returns (content type, ttl). Raises PermissionError."""
        q = request.query_params
        content_type, ttl_text, expires, key, signature = (
            q.get("content_type", ""),
            q.get("ttl", ""),
            q.get("expires", ""),
            q.get("key", ""),
            q.get("signature", ""),
        )
        if not (expires.isdigit() and signature):
            raise PermissionError("the upload URL is not signed")
        if not self.signer.verify(signature, kind, file_id, name, content_type, ttl_text, expires, key):
            raise PermissionError("the upload URL's signature does not match")
        if int(expires) < time.time():
            raise PermissionError("the upload URL has expired; initiate the upload again")
        if key and self.auth.enabled and self.auth.subject(key) is None:
            raise PermissionError("the key this upload URL was issued for has been revoked")
        return content_type, (float(ttl_text) if ttl_text else None)

    async def _store_body(
        self, request: Request, file_id: str, name: str, content_type: str, ttl: float | None
    ) -> Response | None:
        """Write the body as file ``file_id/name``; returns an error response or None."""
        files = self.files
        temp = await asyncio.to_thread(files.open_temp)
        try:
            await _receive_into(request, temp, files.max_bytes, self.body.read_timeout_s)
            await asyncio.to_thread(files.publish_temp, temp, file_id, name, content_type, ttl)
        except FileTooLarge as exc:
            await asyncio.to_thread(files.discard, temp)
            return http.error(413, str(exc), error_type="file_too_large", headers={"Connection": "close"})
        except AlreadyStored:
            return _already_uploaded()
        except http.BodyError as exc:
            await asyncio.to_thread(files.discard, temp)
            return exc.response()
        except BaseException:
            await asyncio.to_thread(files.discard, temp)
            raise
        return None

    # -- signed-URL uploads (JS client, Python "fal" fallback) ------------------------------

    async def initiate(self, request: Request) -> Response:
        return await self._initiate(request, multipart=False)

    async def initiate_multipart(self, request: Request) -> Response:
        return await self._initiate(request, multipart=True)

    async def _initiate(self, request: Request, *, multipart: bool) -> Response:
        try:
            principal = self._principal(request)
            body = await _read_json(request, InitiateRequest, self.body)
            ttl = _lifecycle_ttl(request)
        except AuthError as exc:
            return _auth_error(exc)
        except http.BodyError as exc:
            return exc.response()
        except ValidationError as exc:
            return http.validation_error(exc)
        except ValueError as exc:
            return http.error(400, str(exc))
        file_id, name = new_id(), safe_name(body.file_name, body.content_type)
        base = base_url(request)
        kind = "multipart" if multipart else "put"
        query = self._signed_query(kind, file_id, name, body.content_type, ttl, principal)
        if multipart:
            await asyncio.to_thread(self.files.begin_multipart, file_id, name, body.content_type, ttl)
            upload_url = f"{base}/storage/upload/multipart/{file_id}/{name}?{query}"
        else:
            upload_url = f"{base}/storage/upload/{file_id}/{name}?{query}"
        return JSONResponse({"upload_url": upload_url, "file_url": f"{base}/files/{file_id}/{name}"})

    async def signed_put(self, request: Request) -> Response:
        file_id, name = request.path_params["file_id"], request.path_params["name"]
        if not valid_key(file_id, name):
            return http.error(404, "no such upload")
        try:
            content_type, ttl = self._check_signature(request, "put", file_id, name)
        except PermissionError as exc:
            return http.error(403, str(exc))
        declared = request.headers.get("content-type")
        if declared and content_type and not same_media_type(declared, content_type):
            return http.error(403, f"this upload URL is signed for Content-Type {content_type!r}, not {declared!r}")
        if await asyncio.to_thread(self.files.exists, file_id, name):
            return _already_uploaded()
        failed = await self._store_body(request, file_id, name, content_type or DEFAULT_CONTENT_TYPE, ttl)
        return failed or JSONResponse({})

    async def signed_part(self, request: Request) -> Response:
        file_id, name = request.path_params["file_id"], request.path_params["name"]
        part = int(request.path_params["part"])
        if not valid_key(file_id, name) or not 1 <= part <= 10_000:
            return http.error(404, "no such upload part")
        try:
            self._check_signature(request, "multipart", file_id, name)
        except PermissionError as exc:
            return http.error(403, str(exc))
        return await self._put_part(request, file_id, part)

    async def signed_complete(self, request: Request) -> Response:
        file_id, name = request.path_params["file_id"], request.path_params["name"]
        if not valid_key(file_id, name):
            return http.error(404, "no such upload")
        try:
            self._check_signature(request, "multipart", file_id, name)
        except PermissionError as exc:
            return http.error(403, str(exc))
        return await self._complete(request, file_id, f"{base_url(request)}/files/{file_id}/{name}")

    async def _put_part(self, request: Request, file_id: str, part: int) -> Response:
        files = self.files
        try:
            temp = await asyncio.to_thread(files.part_temp, file_id)
            stored = await asyncio.to_thread(files.parts_size, file_id, excluding=part)
        except UploadError as exc:
            return http.error(404, str(exc))
        receiving = self._receiving.setdefault(file_id, {})

        def within_total(size: int) -> None:  # the whole upload, not just this part, obeys the limit
            receiving[part] = size
            if stored + sum(receiving.values()) > files.max_bytes:
                raise FileTooLarge(files.max_bytes)

        try:
            _, md5 = await _receive_into(request, temp, files.max_bytes, self.body.read_timeout_s, within_total)
            etag = await asyncio.to_thread(files.save_part, file_id, part, temp, md5)
        except FileTooLarge as exc:
            await asyncio.to_thread(files.discard, temp)
            await asyncio.to_thread(files.abort_multipart, file_id)
            return http.error(
                413, f"{exc}; the upload is deleted", error_type="file_too_large", headers={"Connection": "close"}
            )
        except http.BodyError as exc:
            await asyncio.to_thread(files.discard, temp)
            return exc.response()
        except BaseException:
            await asyncio.to_thread(files.discard, temp)
            raise
        finally:
            receiving.pop(part, None)
            if not receiving:
                self._receiving.pop(file_id, None)
        return JSONResponse({"partNumber": part, "etag": etag}, headers={"ETag": etag})

    async def _complete(self, request: Request, file_id: str, file_url: str) -> Response:
        try:
            body = await _read_json(request, CompleteRequest, self.body)
        except http.BodyError as exc:
            return exc.response()
        except ValidationError as exc:
            return http.validation_error(exc)
        except ValueError as exc:
            return http.error(400, str(exc))
        parts = [(p.partNumber, p.etag) for p in body.parts]
        try:
            await asyncio.to_thread(self.files.complete_multipart, file_id, parts)
        except UploadError as exc:
            return http.error(400, str(exc))
        except FileTooLarge as exc:
            return http.error(413, f"{exc}; the upload is deleted", error_type="file_too_large")
        except AlreadyStored:
            return _already_uploaded()
        return JSONResponse({"file_url": file_url, "access_url": file_url})

    # -- token + direct uploads (Python client) ---------------------------------------------

    async def auth_token(self, request: Request) -> Response:
        try:
            principal = self._principal(request)
        except AuthError as exc:
            return _auth_error(exc)
        expires = _not_after(int(time.time()) + STORAGE_TOKEN_TTL_S, principal)
        token = jwt.encode(
            {"sub": principal.key_id, "aud": STORAGE_AUDIENCE, "exp": expires}, self.secret, algorithm="HS256"
        )
        expires_at = datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat()  # "+00:00", offset-aware
        return JSONResponse(
            {"token": token, "token_type": "Bearer", "base_url": base_url(request), "expires_at": expires_at}
        )

    def _direct_start(
        self, request: Request, default_name: str | None
    ) -> tuple[str, str, str, float | None] | Response:
        """A direct upload's new file id, safe name, content type and lifetime; or the error response."""
        try:
            self._principal(request)
            ttl = _lifecycle_ttl(request)
        except AuthError as exc:
            return _auth_error(exc)
        except ValueError as exc:
            return http.error(400, str(exc))
        content_type = request.headers.get("content-type") or DEFAULT_CONTENT_TYPE
        if not valid_content_type(content_type):
            return http.error(
                400, "Content-Type must be a media type such as image/png (printable ASCII, no line breaks)"
            )
        name = safe_name(request.headers.get("x-fal-file-name") or default_name, content_type)
        return new_id(), name, content_type, ttl

    async def direct_upload(self, request: Request) -> Response:
        started = self._direct_start(request, None)
        if isinstance(started, Response):
            return started
        file_id, name, content_type, ttl = started
        failed = await self._store_body(request, file_id, name, content_type, ttl)
        if failed is not None:
            return failed
        return JSONResponse({"access_url": f"{base_url(request)}/files/{file_id}/{name}"})

    async def direct_multipart(self, request: Request) -> Response:
        started = self._direct_start(request, "upload.bin")
        if isinstance(started, Response):
            return started
        file_id, name, content_type, ttl = started
        await asyncio.to_thread(self.files.begin_multipart, file_id, name, content_type, ttl)
        return JSONResponse({"access_url": f"{base_url(request)}/files/{file_id}/{name}", "uploadId": file_id})

    def _direct_target(self, request: Request) -> tuple[str, str] | Response:
        file_id, name = request.path_params["file_id"], request.path_params["name"]
        if not valid_key(file_id, name) or request.path_params["upload_id"] != file_id:
            return http.error(404, "no such upload")
        try:
            self._principal(request)
        except AuthError as exc:
            return _auth_error(exc)
        return file_id, name

    async def direct_part(self, request: Request) -> Response:
        target = self._direct_target(request)
        if isinstance(target, Response):
            return target
        part = int(request.path_params["part"])
        if not 1 <= part <= 10_000:
            return http.error(404, "part numbers go from 1 to 10000")
        return await self._put_part(request, target[0], part)

    async def direct_complete(self, request: Request) -> Response:
        target = self._direct_target(request)
        if isinstance(target, Response):
            return target
        file_id, name = target
        return await self._complete(request, file_id, f"{base_url(request)}/files/{file_id}/{name}")

    # -- serving -------------------------------------------------------------------------------

    async def serve_file(self, request: Request) -> Response:
        stored = await asyncio.to_thread(self.files.get, request.path_params["file_id"], request.path_params["name"])
        if stored is None:
            return http.error(404, "file not found (it may have expired)")
        headers = {
            "Cache-Control": "public, max-age=3600",
            # Uploaded HTML or SVG must not run as this server's origin (it also serves tokens).
            "Content-Security-Policy": "sandbox",
            "X-Content-Type-Options": "nosniff",
        }
        # Files stored before content types were checked may carry one a header cannot.
        media_type = stored.content_type if valid_content_type(stored.content_type) else FALLBACK_CONTENT_TYPE
        return FileResponse(stored.path, media_type=media_type, headers=headers)

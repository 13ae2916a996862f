"""Stored files on local disk: uploads and app outputs, served back at ``/files/{id}/{name}``.

Blocking by design: callers run these methods in a thread. A file lives at
``<root>/<id[:2]>/<id>/<name>`` beside a ``.meta`` JSON (content type, size, expiry).
Ids are random (128 bits), names are sanitised, and every path is checked to stay under
the root, so a URL can name nothing else. A file appears atomically (written to a temp
file, then renamed), so a reader never sees half a file, and exactly once: a file is never
overwritten. Content types are RFC 9110 media types (ASCII, no line breaks), checked
before anything is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
META = ".meta"
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
#: A media type as RFC 9110 allows it: type/subtype and parameters, printable ASCII only.
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\"))*"
)
MAX_CONTENT_TYPE_CHARS = 255
FALLBACK_CONTENT_TYPE = "application/octet-stream"


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file exceeds the limit of {limit} bytes (--max-upload-bytes)")
        self.limit = limit


class UploadError(Exception):
    """A multipart upload step that cannot be done (unknown upload, missing part)."""


class AlreadyStored(Exception):
    """The file already exists: a file is written once, never overwritten."""


def valid_content_type(value: str) -> bool:
    """Whether ``value`` is a media type a response header can carry unchanged."""
    return len(value) <= MAX_CONTENT_TYPE_CHARS and _MEDIA_TYPE.fullmatch(value) is not None


def same_media_type(a: str, b: str) -> bool:
    """Whether two content types name the same media type (parameters and case aside)."""
    return a.split(";", 1)[0].strip().lower() == b.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class StoredFile:
    id: str
    name: str
    path: Path
    content_type: str
    size: int
    expires_at: float | None

    @property
    def url_path(self) -> str:
        return f"/files/{self.id}/{self.name}"


def new_id() -> str:
    return secrets.token_urlsafe(16)


def safe_name(file_name: str | None, content_type: str) -> str:
    """A file name safe in a URL and on disk, keeping the caller's name where possible."""
    base = os.path.basename((file_name or "").replace("\\", "/"))
    name = _UNSAFE.sub("_", base).lstrip("._-")[:100]
    if not name:
        ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
        name = "file" + ext
    return name


def valid_key(file_id: str, name: str) -> bool:
    return bool(_ID.match(file_id) and _NAME.match(name))


def load_secret(path: Path) -> bytes:
    """A 32-byte server secret kept in ``path`` (created 0600 on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


class UrlSigner:
    """HMAC-SHA256 signatures for upload URLs (the signature is the credential)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def verify(self, signature: str, *parts: str) -> bool:
        return hmac.compare_digest(self.sign(*parts), signature)


class FileStore:
    """Files under ``root``; ``max_bytes`` caps one file, ``default_ttl_s`` (0 = forever) its life."""

    def __init__(self, root: str | Path, *, max_bytes: int, default_ttl_s: float) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.default_ttl_s = default_ttl_s
        self._tmp = self.root / ".tmp"
        self._parts = self.root / ".multipart"

    def ensure(self) -> None:
        for folder in (self.root, self._tmp, self._parts):
            folder.mkdir(parents=True, exist_ok=True)

    def _dir(self, file_id: str) -> Path:
        folder = (self.root / file_id[:2] / file_id).resolve()
        if self.root not in folder.parents:
            raise ValueError(f"bad file id {file_id!r}")
        return folder

    def _expiry(self, ttl_s: float | None) -> float | None:
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        return time.time() + ttl if ttl > 0 else None

    def _publish(self, tmp: Path, file_id: str, name: str, content_type: str, ttl_s: float | None) -> StoredFile:
        """Move ``tmp`` into place as ``file_id/name``; :class:`AlreadyStored` (``tmp`` removed) if it exists."""
        folder = self._dir(file_id)
        folder.mkdir(parents=True, exist_ok=True)
        size = tmp.stat().st_size
        expires_at = self._expiry(ttl_s)
        meta = {"content_type": content_type, "size": size, "expires_at": expires_at, "created_at": time.time()}
        try:
            fd = os.open(folder / META, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # the one writer of this id
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise AlreadyStored(f"{file_id}/{name} is already stored") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(meta))
        os.replace(tmp, folder / name)
        return StoredFile(file_id, name, folder / name, content_type, size, expires_at)

    def exists(self, file_id: str, name: str) -> bool:
        """Whether ``file_id`` has been stored (or is being published)."""
        return valid_key(file_id, name) and (self._dir(file_id) / META).exists()

    # -- writing -----------------------------------------------------------------------

    def put_bytes(
        self, data: bytes, content_type: str, file_name: str | None = None, ttl_s: float | None = None
    ) -> StoredFile:
        if len(data) > self.max_bytes:
            raise FileTooLarge(self.max_bytes)
        file_id, name = new_id(), safe_name(file_name, content_type)
        with tempfile.NamedTemporaryFile(dir=self._tmp, delete=False) as f:
            f.write(data)
        return self._publish(Path(f.name), file_id, name, content_type, ttl_s)

    def open_temp(self) -> IO[bytes]:
        """A temp file to stream an upload into; pass it to :meth:`publish_temp` or :meth:`discard`."""
        return tempfile.NamedTemporaryFile(dir=self._tmp, delete=False)

    def publish_temp(
        self, temp: IO[bytes], file_id: str, name: str, content_type: str, ttl_s: float | None
    ) -> StoredFile:
        temp.close()
        return self._publish(Path(temp.name), file_id, name, content_type, ttl_s)

    @staticmethod
    def discard(temp: IO[bytes]) -> None:
        temp.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp.name)

    # -- multipart ---------------------------------------------------------------------

    def _upload_dir(self, file_id: str) -> Path:
        if not _ID.match(file_id):
            raise UploadError(f"unknown upload {file_id!r}")
        return self._parts / file_id

    def begin_multipart(self, file_id: str, name: str, content_type: str, ttl_s: float | None) -> None:
        folder = self._upload_dir(file_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).write_text(json.dumps({"name": name, "content_type": content_type, "ttl_s": ttl_s}))

    def part_temp(self, file_id: str) -> IO[bytes]:
        folder = self._upload_dir(file_id)
        if not (folder / META).is_file():
            raise UploadError(f"no multipart upload {file_id!r} in progress")
        return tempfile.NamedTemporaryFile(dir=folder, prefix=".part-", delete=False)

    def parts_size(self, file_id: str, *, excluding: int | None = None) -> int:
        """Bytes of the parts of an upload in progress on disk (``excluding`` one part number)."""
        total = 0
        for part in self._upload_dir(file_id).glob("[0-9]" * 5):
            if excluding is None or int(part.name) != excluding:
                with contextlib.suppress(FileNotFoundError):
                    total += part.stat().st_size
        return total

    def abort_multipart(self, file_id: str) -> None:
        """Delete an upload in progress and its parts (a refused upload leaves nothing behind)."""
        with contextlib.suppress(UploadError):
            shutil.rmtree(self._upload_dir(file_id), ignore_errors=True)

    def save_part(self, file_id: str, part_number: int, temp: IO[bytes], md5: str) -> str:
        """Keep a part; returns its ETag (the MD5 of its bytes, quoted, as object stores do)."""
        temp.close()
        os.replace(temp.name, self._upload_dir(file_id) / f"{part_number:05d}")
        return f'"{md5}"'

    def complete_multipart(
        self, file_id: str, parts: Iterable[tuple[int, str]], content_type: str | None = None
    ) -> StoredFile:
        folder = self._upload_dir(file_id)
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            raise UploadError(f"no multipart upload {file_id!r} in progress") from None
        numbers = sorted(n for n, _ in parts)
        if not numbers:
            raise UploadError("parts: at least one part is needed")
        total = 0
        for n in numbers:
            part = folder / f"{n:05d}"
            if not part.is_file():
                raise UploadError(f"parts: part {n} was never uploaded")
            total += part.stat().st_size
        if total > self.max_bytes:
            shutil.rmtree(folder, ignore_errors=True)
            raise FileTooLarge(self.max_bytes)
        with self.open_temp() as out:
            for n in numbers:
                with open(folder / f"{n:05d}", "rb") as part_file:
                    shutil.copyfileobj(part_file, out, 1 << 20)
        stored = self._publish(
            Path(out.name), file_id, meta["name"], content_type or meta["content_type"], meta["ttl_s"]
        )
        shutil.rmtree(folder, ignore_errors=True)
        return stored

    # -- reading -----------------------------------------------------------------------

    def get(self, file_id: str, name: str) -> StoredFile | None:
        """The stored file, or None when it does not exist or has expired."""
        if not valid_key(file_id, name):
            return None
        folder = self._dir(file_id)
        try:
            meta = json.loads((folder / META).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        path = folder / name
        if not path.is_file():
            return None
        expires_at = meta.get("expires_at")
        if expires_at is not None and expires_at <= time.time():
            return None
        return StoredFile(file_id, name, path, meta["content_type"], meta["size"], expires_at)

    def read(self, file_id: str, name: str) -> tuple[bytes, str] | None:
        stored = self.get(file_id, name)
        if stored is None:
            return None
        return stored.path.read_bytes(), stored.content_type

    def sweep(self, now: float | None = None, stale_upload_s: float = 24 * 3600) -> int:
        """Delete expired files and abandoned temp files/uploads; returns files deleted."""
        now = time.time() if now is None else now
        removed = 0
        for shard in self.root.iterdir():
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for folder in shard.iterdir():
                try:
                    meta = json.loads((folder / META).read_text())
                except (FileNotFoundError, NotADirectoryError, ValueError):
                    continue
                expires_at = meta.get("expires_at")
                if expires_at is not None and expires_at <= now:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        for leftover in (*self._tmp.iterdir(), *self._parts.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < now - stale_upload_s:
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink()
        return removed

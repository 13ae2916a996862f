"""Edges sharing Redis must share one files folder: checked at start.

An upload made through one edge is fetched through another, and a job's output file is
written by whichever edge ran it, so every edge's ``--data-dir`` must be the same folder
(a volume all of them mount: NFS, EFS, CephFS, a hostPath on one node, ...). The folder
carries a random id (:func:`framewire.gateway.storage.store.folder_id`); the first edge
records it in Redis and every later edge compares. An edge with another folder refuses
to start, naming both, instead of answering with files the other edges cannot find.

An S3-compatible store would replace the folder behind the same
:class:`~framewire.gateway.storage.store.FileStore` calls: ``put_bytes``/``publish_temp``
as ``PutObject`` (multipart parts as ``UploadPart``/``CompleteMultipartUpload``), ``get``
and ``read`` as ``HeadObject``/``GetObject`` (or a redirect to a presigned GET URL),
expiry as a lifecycle rule or an ``expires_at`` tag the sweep lists, and the server
secrets (``storage.key``, ``webhook_ed25519.pem``) moved to Redis or a secret manager,
since there would be no shared folder to hold them.
"""

from __future__ import annotations

import asyncio

from framewire.gateway.storage.store import FileStore, folder_id
from framewire.state.connection import StateConnection, StateError


async def check_shared_folder(conn: StateConnection, files: FileStore) -> None:
    """StateError naming the fix when ``files`` is not the folder the other edges use."""
    mine = await asyncio.to_thread(folder_id, files.root)
    key = conn.key("files", "folder-id")
    with conn.guard("check the shared files folder"):
        await conn.client.set(key, mine, nx=True)
        theirs = await conn.client.get(key)
    if theirs != mine:
        raise StateError(
            f"the files folder {files.root} is not the one the other edges of {conn.url} use: mount one shared"
            " folder as --data-dir on every edge (uploads and results written through one edge are read through"
            f" the others). If that folder is gone for good, delete the Redis key {key} and start again"
        )

"""Results storage behind one URI: a local folder, or ``s3://``/``gs://`` on a cluster.

The service and the batch path both write outputs here through ``pyarrow.fs``, so any
replica on any node can serve any result. Each file is written under a temporary name
and moved into place (atomic on a local disk; object stores publish a key whole on
upload), so a re-run of a job replaces its files and never leaves half of them.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_local_uri(uri: str) -> bool:
    """Whether ``uri`` names this machine's own disk (a path, or ``file://``) rather than
    storage every node shares (``s3://``, ``gs://``, ...)."""
    return "://" not in uri or uri.startswith("file://")


class ResultStore:
    """Files under ``uri``, addressed by relative keys such as ``<job_id>/score.musicxml``."""

    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, key: str) -> str:
        key = key.strip("/")
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def url(self, key: str = "") -> str:
        """Where ``key`` lives, as a user would name it: a local path, or ``s3://bucket/...``."""
        path = self.path(key) if key else self.root
        if self.local:
            return path
        return f"{self.uri.split('://', 1)[0]}://{path}"

    def put_file(self, local: str | os.PathLike[str], key: str) -> str:
        with open(local, "rb") as source:
            return self._put(source, key)

    def put_bytes(self, data: bytes, key: str) -> str:
        return self._put(io.BytesIO(data), key)

    def _put(self, source: io.RawIOBase | io.BufferedIOBase, key: str) -> str:
        target = self.path(key)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        staging = f"{parent}/.{uuid.uuid4().hex}.partial" if self.local else target
        with self.fs.open_output_stream(staging) as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        if staging != target:
            self.fs.move(staging, target)
        return target

    def put_dir(self, local_dir: str | os.PathLike[str], prefix: str) -> dict[str, str]:
        """Upload every file under ``local_dir`` to ``prefix/``; returns relative name -> key."""
        local_dir = Path(local_dir)
        keys: dict[str, str] = {}
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file() and not p.name.endswith(".partial")):
            relative = file.relative_to(local_dir).as_posix()
            key = f"{prefix.strip('/')}/{relative}"
            self.put_file(file, key)
            keys[relative] = key
        return keys

    def exists(self, key: str) -> bool:
        return bool(self.fs.get_file_info(self.path(key)).type == pafs.FileType.File)

    def list_files(self, prefix: str) -> list[str]:
        """Keys of the files directly under ``prefix`` (sorted; none if it does not exist)."""
        selector = pafs.FileSelector(self.path(prefix), allow_not_found=True)
        root = self.root.rstrip("/") + "/"
        return sorted(
            info.path[len(root) :]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.endswith(".partial")
        )

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.delete_file(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key)) as stream:
            return bytes(stream.read())

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if self.fs.get_file_info(target).type == pafs.FileType.Directory:
            self.fs.delete_dir(target)

"""Local paths and s3:// URLs behind one pyarrow filesystem API, and all-or-nothing stage commits.

S3 endpoints follow the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), so a
loopback S3 server in tests and a real bucket on a cluster take the same code path.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs

from adq_ray.errors import OwnershipError

SUCCESS = "_SUCCESS"
OWNED = "_ADQ_OWNED"  # marks a directory adq-ray created (staging, then committed): the only kind `commit` replaces


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URL.

    An S3 endpoint set on the driver (`AWS_ENDPOINT_URL`) is pinned into the filesystem object, so it
    travels with it to Ray workers whose environment lacks it; credentials stay with each node's chain.
    """
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        scheme, _, host = endpoint.rpartition("://")
        fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme or "https", region=os.environ.get("AWS_REGION"))
        return fs, uri.removeprefix("s3://")
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    """Join URL or path segments with '/'."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def open_binary(uri: str) -> io.BytesIO:
    """The whole object as a seekable in-memory file (weights, small tables)."""
    return io.BytesIO(read_bytes(uri))


def total_bytes(uri: str) -> int:
    """Bytes of all files under a directory (bookkeeping files starting with '_' or '.' excluded)."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(("_", ".")))


def is_committed(uri: str) -> bool:
    """True once `commit` has published the stage directory at `uri`."""
    return exists(join(uri, SUCCESS))


def staging_dir(uri: str) -> str:
    """A fresh sibling directory that a stage writes into before `commit`."""
    return f"{uri.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}"


def commit(staging: str, final: str, meta: dict[str, Any] | None = None) -> None:
    """Publish `staging` as `final`, then write `final/_SUCCESS` last.

    Readers treat a directory without `_SUCCESS` as absent, so an interrupted run never leaves a
    half-written stage that looks complete. Locally the move is one rename; on S3 it is a copy of
    each object (S3 has no rename) followed by the marker.
    """
    fs, src = resolve(staging)
    _, dst = resolve(final)
    if not exists(join(staging, OWNED)):
        write_bytes(join(staging, OWNED), b"{}")  # staging is the caller's own: mark it (and what it becomes)
    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        if not exists(join(final, OWNED)):
            raise OwnershipError(
                f"refusing to replace {final}: adq-ray did not create it (no {OWNED} marker); move it away"
            )
        fs.delete_dir(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    else:
        selector = pafs.FileSelector(src, recursive=True)
        # The marker first: a copy cut short still carries it, so the next commit may replace it.
        files = sorted((i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File), key=_marker_first)
        for info in files:
            fs.copy_file(info.path, dst + info.path[len(src) :])
        fs.delete_dir(src)
    write_json(join(final, SUCCESS), meta or {})


def _marker_first(info: pafs.FileInfo) -> tuple[bool, str]:
    return info.base_name != OWNED, info.path


def remove(uri: str) -> None:
    """Delete a file or a directory tree, if it exists."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)

"""Local paths and s3:// URLs behind one pyarrow filesystem API, and all-or-nothing stage commits.

S3 endpoints follow the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), so a
loopback S3 server in tests and a real bucket on a cluster take the same code path.

Every object-store call is retried the same way (docs/RELIABILITY.md): each S3 request by the AWS SDK's
standard retry mode (exponential backoff, full jitter) with connect and request timeouts, all pinned
into the filesystem objects that travel to Ray workers; each operation of ours (`retry`) once more with
backoff, bounded by `storage_attempts` and `stall_seconds`. An error is then classified: transient
(5xx, throttling, connection refused/reset, timeouts) -> `TransientStorageError`, which fails the stage;
permanent per object (404 after listing, 403) -> the caller may reject that one object.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

import pyarrow.fs as pafs

from adq_ray.errors import OwnershipError, UserError
from adq_ray.redact import redact

SUCCESS = "_SUCCESS"
OWNED = "_ADQ_OWNED"  # marks a directory adq-ray created (staging, then committed): the only kind `commit` replaces
T = TypeVar("T")
log = logging.getLogger("adq_ray")
# What survives the SDK's retries and is still worth retrying / what no retry will fix (pyarrow's messages).
_TRANSIENT = re.compile(
    r"HTTP status (?:429|500|502|503|504)|SERVICE_UNAVAILABLE|SLOW_DOWN|SlowDown|THROTTL|Throttl|INTERNAL_FAILURE"
    r"|NETWORK_CONNECTION|REQUEST_TIMEOUT|RequestTimeout|curlCode: (?:6|7|18|28|35|52|55|56)|[Cc]onnection (?:refused|reset)"
    r"|[Tt]imed out|[Tt]imeout was reached|Broken pipe"
)
_PERMANENT = re.compile(
    r"ACCESS_DENIED|AccessDenied|HTTP status 40[34]|NO_SUCH_KEY|NoSuchKey|NO_SUCH_BUCKET|does not exist"
)


class StorageError(UserError):
    """An object-store operation failed in a way this run cannot fix: the stage fails, nothing is committed.

    One line: what was done to which object, the error, and how many objects failed (`failed`).
    """

    def __init__(self, what: str, error: str, failed: int = 1, tries: int = 1, seconds: float = 0.0) -> None:
        super().__init__(what, error, failed, tries, seconds)
        self.what, self.error, self.failed, self.tries, self.seconds = what, error, failed, tries, seconds

    def __str__(self) -> str:
        error = " ".join(self.error.split())
        return redact(f"object store: {self.what}: {error} ({self._detail()}); nothing was committed")

    def _detail(self) -> str:
        return f"{self.failed} object(s) failed"


class TransientStorageError(StorageError):
    """A transient error (5xx, throttling, connection refused/reset, timeout) outlived every retry."""

    def _detail(self) -> str:
        return (
            f"transient, still failing after {self.tries} tries over {self.seconds:.0f} s; "
            f"{self.failed} object(s) failed; rerun when the store is healthy, or raise storage_attempts / "
            "stall_seconds"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How object-store calls are retried and timed out (Config: storage_attempts, *_timeout, stall_seconds).

    `attempts` bounds both the SDK's tries per request and `retry`'s tries per operation; `deadline`
    (seconds, 0 = none) stops `retry` from starting another try once an operation has failed that long.
    Backoff: full jitter, uniform(0, min(max_delay, base_delay * 2**try)), as the AWS SDKs' standard mode.
    """

    attempts: int = 5
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    deadline: float = 120.0
    base_delay: float = 1.0
    max_delay: float = 20.0

    @classmethod
    def of(cls, config: Any) -> RetryPolicy:
        """The policy a Config asks for."""
        return cls(config.storage_attempts, config.connect_timeout, config.request_timeout, config.stall_seconds)


_policy = RetryPolicy()


def configure(policy: RetryPolicy) -> None:
    """Set the process's policy (the driver does, per run); filesystems from `resolve` carry it to workers."""
    global _policy
    _policy = policy


def policy() -> RetryPolicy:
    """The policy `resolve` and `retry` use in this process."""
    return _policy


def is_transient(err: BaseException) -> bool:
    """True for an error a later try may not see: 5xx, throttling, connection refused/reset, timeouts."""
    if isinstance(err, (FileNotFoundError, PermissionError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return isinstance(err, OSError) and bool(_TRANSIENT.search(str(err)))


def is_permanent(err: BaseException) -> bool:
    """True for what no retry fixes for this object: not found (404, vanished after listing) or forbidden (403)."""
    if isinstance(err, (FileNotFoundError, PermissionError)):
        return True
    return isinstance(err, OSError) and not is_transient(err) and bool(_PERMANENT.search(str(err)))


def retry(fn: Callable[..., T], *args: Any, what: str, policy: RetryPolicy | None = None) -> T:
    """`fn(*args)`, tried again after a transient error with exponential backoff and full jitter.

    Gives up after `policy.attempts` tries, or when the next try would start more than `policy.deadline`
    seconds after the first, with a `TransientStorageError` naming `what`; other errors pass unchanged.
    """
    p = policy or _policy
    start = time.monotonic()
    for tries in range(1, p.attempts + 1):
        try:
            return fn(*args)
        except OSError as err:
            if not is_transient(err):
                raise
            elapsed = time.monotonic() - start
            delay = random.uniform(0.0, min(p.max_delay, p.base_delay * 2 ** (tries - 1)))
            if tries == p.attempts or (p.deadline and elapsed + delay > p.deadline):
                raise TransientStorageError(what, str(err), 1, tries, elapsed) from err
            log.warning("object store: %s: %s (try %d of %d; again in %.1f s)", what, err, tries, p.attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


S3_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")  # where S3 is; never credentials


def worker_env(job_env: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's `S3_VARIABLES` that are set, less those the job's own runtime_env (`job_env`) sets.

    Ray workers start from their node's environment, not the driver's; `resources.init_ray` hands them these
    so that their own reads (patch sources, bin tasks, weights) reach the same endpoint as the driver's.
    Credentials stay with each node's chain: a runtime_env is visible to anyone who can read the dashboard.
    """
    return {k: os.environ[k] for k in S3_VARIABLES if os.environ.get(k) and k not in (job_env or {})}


def endpoint(uri: str) -> str:
    """The object-store endpoint a URI reaches ("local" for local paths), for error messages."""
    if not is_remote(uri):
        return "local"
    if uri.startswith("s3://"):
        return os.environ.get("AWS_ENDPOINT_URL") or f"s3 (AWS, region {os.environ.get('AWS_REGION', 'default')})"
    return uri.split("://", 1)[0] + "://"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URL.

    An S3 endpoint set on the driver (`AWS_ENDPOINT_URL`) is pinned into the filesystem object, so it
    travels with it to Ray workers whose environment lacks it (and `resources.init_ray` sets it in the
    workers' environment for the filesystems they resolve themselves); credentials stay with each node's chain
    (or come from the URI, `s3://KEY:SECRET@bucket/...`). So do the retry strategy and the timeouts of
    the current `policy()`.
    """
    if uri.startswith("s3://"):
        return _s3(uri, _policy)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _s3(uri: str, p: RetryPolicy) -> tuple[pafs.S3FileSystem, str]:
    """An S3FileSystem with the policy's retries and timeouts, and the `bucket/key` path of `uri`.

    Keys are kept verbatim ('#' and '?' included), except a trailing query of pyarrow's URI options
    (`region`, `endpoint_override`, `scheme`), which is honoured as by `FileSystem.from_uri`.
    """
    netloc, slash, key = uri.removeprefix("s3://").partition("/")
    credentials, _, bucket = netloc.rpartition("@")
    key, query = _uri_options(key if slash else "")
    if not slash:
        bucket, query = _uri_options(bucket)
    options: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=p.attempts),
        "connect_timeout": p.connect_timeout,
        "request_timeout": p.request_timeout,
        "region": query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    }
    if credentials:
        access, _, secret = credentials.partition(":")
        options.update(access_key=unquote(access), secret_key=unquote(secret))
    endpoint_url = query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint_url:
        scheme, _, host = endpoint_url.rpartition("://")
        options.update(endpoint_override=host, scheme=query.get("scheme") or scheme or "https")
    elif not options["region"] and bucket:
        options["region"] = _bucket_region(bucket)
    return pafs.S3FileSystem(**options), bucket + slash + key


def _uri_options(text: str) -> tuple[str, dict[str, str]]:
    """`text` without a trailing `?region=...&scheme=...` of pyarrow's URI options, and those options."""
    head, mark, tail = text.rpartition("?")
    options = {k: v[-1] for k, v in parse_qs(tail).items()} if mark else {}
    if not options or set(options) - {"region", "endpoint_override", "scheme"}:
        return text, {}
    return head, options


def _bucket_region(bucket: str) -> str | None:
    """The bucket's region (as `FileSystem.from_uri` finds it), or None to let the SDK decide."""
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return None


def join(base: str, *parts: str) -> str:
    """Join URL or path segments with '/'."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return retry(fs.get_file_info, path, what=f"look up {uri}").type != pafs.FileType.NotFound


def stamp(uri: str) -> dict[str, Any] | None:
    """{"size", "mtime"} of the file at `uri` (None if there is none): tells a rewritten file from the one seen before."""
    fs, path = resolve(uri)
    info = retry(fs.get_file_info, path, what=f"look up {uri}")
    if info.type != pafs.FileType.File:
        return None
    return {"size": info.size, "mtime": info.mtime.isoformat() if info.mtime else None}


def read_bytes(uri: str) -> bytes:
    return retry(read_all, *resolve(uri), what=f"read {uri}")


def read_all(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole file at `path` (one try: wrap in `retry`)."""
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    retry(_create_parent, fs, path, what=f"create the folder of {uri}")
    retry(_write_all, fs, path, data, what=f"write {uri}")


def _create_parent(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)


def _write_all(fs: pafs.FileSystem, path: str, data: bytes) -> None:
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
    infos = retry(fs.get_file_info, pafs.FileSelector(path, recursive=True, allow_not_found=True), what=f"list {uri}")
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
    kind = retry(fs.get_file_info, path, what=f"look up {uri}").type
    if kind == pafs.FileType.Directory:
        retry(_gone, fs.delete_dir, path, what=f"delete {uri}")
    elif kind == pafs.FileType.File:
        retry(_gone, fs.delete_file, path, what=f"delete {uri}")


def _gone(delete: Callable[[str], None], path: str) -> None:
    """`delete(path)`, where a path already gone (an earlier try that lost its answer) is success."""
    try:
        delete(path)
    except FileNotFoundError:
        pass

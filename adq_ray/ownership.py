"""What a run may write and delete, and the one-writer lock of an output.

- `check_paths`: before any work, refuse an input inside the output (or the stage cache) or the other
  way round, and an output or cache path that is a file.
- `claim_output`: an output tree a run created carries `_ADQ_OUTPUT`; an existing non-empty output
  without it is refused unless `overwrite` (then only the run's own product names are replaced).
- `OutputLock`: `_ADQ_LOCK` in the output, created exclusively (local: O_EXCL; S3: a lease object put
  with If-None-Match, then read back), renewed by a heartbeat and released in `finally`. A second run
  fails naming the holder; a lease whose holder is gone (expired, or a dead pid on this host) is taken
  over with a warning.
- `clean_staging`: `*.tmp-*` staging directories that killed runs left are removed at the next start,
  only those carrying adq-ray's `_ADQ_OWNED` marker.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from adq_ray import storage
from adq_ray.config import Config
from adq_ray.errors import LockError, OwnershipError
from adq_ray.redact import redact

log = logging.getLogger("adq_ray")

OUTPUT_MARKER = "_ADQ_OUTPUT"
LOCK = "_ADQ_LOCK"
LEASE_SECONDS = 300.0  # a holder renews every third of this; a lease not renewed for this long is stale
# What a run writes at the top of its output: the only names `overwrite` replaces in a foreign output.
PRODUCTS = ("dataset", "manifest.parquet", "summary.json", "config.json", "report", storage.SUCCESS)
_STAGING = re.compile(r"\.tmp-[0-9a-f]{12}$")


def owner() -> dict[str, Any]:
    """Who this process is, as written into markers and the lock."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def _where(uri: str) -> tuple[str, str]:
    """(namespace, normalized path) of a location, credentials and query dropped: comparable by prefix."""
    if "://" in uri and not uri.startswith("file://"):
        scheme, rest = uri.split("://", 1)
        rest = rest.split("?", 1)[0].split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest.split("?", 1)[0]
        return scheme, "/" + rest.strip("/")
    path = uri.removeprefix("file://")
    return "file", os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(inner: tuple[str, str], outer: tuple[str, str]) -> bool:
    """True when `inner` is `outer` or below it."""
    return inner[0] == outer[0] and (inner[1] == outer[1] or inner[1].startswith(outer[1].rstrip("/") + "/"))


def check_paths(config: Config) -> None:
    """Refuse (OwnershipError) locations where a run could overwrite or delete its own input."""
    source = _where(config.input)
    for name, uri in (("output", config.output), ("cache", config.cache_uri)):
        target = _where(uri)
        if _inside(source, target) or _inside(target, source):
            raise OwnershipError(
                f"{name} {redact(uri)} and input {redact(config.input)} overlap (one is inside the other): "
                f"the run would write into its own input; choose an {name} outside the input"
            )
        fs, path = storage.resolve(uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            raise OwnershipError(f"{name} {redact(uri)} is a file; {name} must be a directory (or a new path)")


def _children(uri: str) -> list[pafs.FileInfo]:
    fs, path = storage.resolve(uri)
    return fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))


def check_output(config: Config, overwrite: bool = False) -> set[str]:
    """Refuse (OwnershipError) a non-empty output adq-ray did not create, unless `overwrite`; returns its names."""
    names = {i.base_name for i in _children(config.output)} - {LOCK}
    if names and OUTPUT_MARKER not in names and not overwrite:
        listed = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise OwnershipError(
            f"output {redact(config.output)} is not empty and was not created by adq-ray (it holds {listed}); "
            "choose a new or empty output, or pass --overwrite to replace adq-ray's products in it "
            f"({', '.join(PRODUCTS)}; nothing else is touched)"
        )
    return names


def claim_output(config: Config, overwrite: bool = False) -> None:
    """Mark the output as this tool's (under its lock), refusing a foreign non-empty one unless `overwrite`."""
    names = check_output(config, overwrite)
    if names and OUTPUT_MARKER not in names:
        log.warning("--overwrite: taking over %s; replacing only %s", redact(config.output), ", ".join(PRODUCTS))
        for name in PRODUCTS:
            storage.remove(storage.join(config.output, name))
    if OUTPUT_MARKER not in names:
        stamp = {**owner(), "tool": "adq-ray", "created": _now()}
        storage.write_json(storage.join(config.output, OUTPUT_MARKER), stamp)


def mark_staging(staging: str) -> None:
    """Mark a fresh staging directory as this run's (before the stage writes into it)."""
    storage.write_json(storage.join(staging, storage.OWNED), {**owner(), "created": _now()})


def clean_staging(config: Config) -> list[str]:
    """Remove the `*.tmp-*` staging directories killed runs left; returns those removed.

    Only directories that carry `_ADQ_OWNED` are candidates. Under the locked output every such
    leftover is stale (the lock excludes another writer); in a cache elsewhere (shared by runs into
    other outputs) only those whose writer was a process on this host that is gone.
    """
    removed = []
    locked = _where(config.output)
    for parent in dict.fromkeys((config.output, config.cache_uri)):
        for info in _children(parent):
            if info.type != pafs.FileType.Directory or not _STAGING.search(info.base_name):
                continue
            uri = storage.join(parent, info.base_name)
            marker = _read_json(storage.join(uri, storage.OWNED))
            if marker is None:
                continue  # not ours: leave it
            if _inside(_where(uri), locked) or (marker.get("host") == socket.gethostname() and _dead(marker)):
                log.warning("removing %s, left by an interrupted run", redact(uri))
                storage.remove(uri)
                removed.append(uri)
    return removed


def _read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON file, or None when it is absent or unreadable (half-written)."""
    try:
        value = storage.read_json(uri)
    except (FileNotFoundError, ValueError):
        return None
    except OSError:
        if not storage.exists(uri):
            return None
        raise
    return value if isinstance(value, dict) else None


def _dead(holder: dict[str, Any]) -> bool:
    """True when a marker's pid no longer runs (only meaningful on the marker's own host)."""
    try:
        pid = int(holder.get("pid", -1))
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError, OverflowError):
        return False
    return False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class OutputLock:
    """One writer per output: `with OutputLock(output):` holds `<output>/_ADQ_LOCK` for the block."""

    def __init__(self, output: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.output, self.uri, self.lease = output, storage.join(output, LOCK), lease_seconds
        self.run = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = isinstance(storage.resolve(output)[0], pafs.LocalFileSystem)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            self.release()
        except Exception as err:  # the store is failing: never mask the error that ended the run
            if kind is None:
                raise
            log.warning("could not release the lock %s: %s", redact(self.uri), redact(str(err)))

    def _record(self) -> dict[str, Any]:
        return {**owner(), "run": self.run, "started": _now(), "expires": time.time() + self.lease}

    def acquire(self) -> None:
        """Take the lock, or raise LockError naming its holder; a stale lock is taken over with a warning."""
        for _ in range(3):
            if self._create(self._record()):
                self._thread = threading.Thread(target=self._heartbeat, name="adq-lock", daemon=True)
                self._thread.start()
                return
            holder = self._holder()
            if holder is None:
                time.sleep(0.5)  # being written, or just released: look again
                continue
            why = self._stale(holder)
            if not why:
                raise LockError(
                    f"output {redact(self.output)} is locked by another run: {_describe(holder)}; wait for it to "
                    f"finish (or, if that run is gone, delete {redact(self.uri)})"
                )
            log.warning("taking over the lock of %s from %s (%s)", redact(self.output), _describe(holder), why)
            self._break(holder)
        raise LockError(f"could not take the lock {redact(self.uri)}: other runs keep taking it; try again")

    def check(self) -> None:
        """Raise LockError if another run took the lock over (this run stalled past its lease)."""
        if self.lost:
            raise LockError(f"lost the lock of {redact(self.output)}: {self.lost}; nothing more is committed")

    def release(self) -> None:
        """Stop renewing and delete the lock, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
            holder = self._holder()
            if holder is not None and holder.get("run") == self.run:
                with contextlib.suppress(FileNotFoundError):
                    storage.remove(self.uri)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                holder = self._holder()
                if holder is None or holder.get("run") != self.run:
                    self.lost = f"now held by {_describe(holder) if holder else 'nobody'}"
                    return
                self._renew({**holder, "expires": time.time() + self.lease})
            except OSError as err:  # a transient storage error: the lease has slack, try again next beat
                log.warning("could not renew the lock %s: %s", redact(self.uri), redact(str(err)))

    def _renew(self, record: dict[str, Any]) -> None:
        """Rewrite the lock in one step (a reader never sees it half-written): rename locally, one PUT on S3."""
        data = json.dumps(record, indent=2).encode()
        if self._local:
            path = storage.resolve(self.uri)[1]
            with open(f"{path}.{self.run}", "wb") as f:
                f.write(data)
            os.replace(f"{path}.{self.run}", path)
        else:
            storage.write_bytes(self.uri, data)

    def _holder(self) -> dict[str, Any] | None:
        return _read_json(self.uri)

    def _stale(self, holder: dict[str, Any]) -> str:
        """Why the holder is gone ("" if it may be alive)."""
        if holder.get("host") == socket.gethostname() and _dead(holder):
            return f"its process {holder.get('pid')} is not running"
        if float(holder.get("expires", 0)) < time.time():
            return "its lease expired"
        return ""

    def _create(self, record: dict[str, Any]) -> bool:
        """Create the lock if absent (atomically where the store allows); True when it is now ours."""
        data = json.dumps(record, indent=2).encode()
        if self._local:
            path = storage.resolve(self.uri)[1]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        created = _s3_put_if_absent(self.uri, data)
        if created is None:  # the store ignores conditional writes: check, write, then read back
            if storage.exists(self.uri):
                return False
            storage.write_bytes(self.uri, data)
        elif not created:
            return False
        time.sleep(0.2)  # a racing writer that slipped in shows up in the read back
        holder = self._holder()
        return holder is not None and holder.get("run") == record["run"]

    def _break(self, holder: dict[str, Any]) -> None:
        """Remove a stale lock, if it is still the one judged stale."""
        if self._local:
            path = storage.resolve(self.uri)[1]
            aside = f"{path}.stale-{self.run}"
            try:
                os.rename(path, aside)  # atomic: of two runs breaking the same lock, one moves it
            except FileNotFoundError:
                return
            moved = _read_json(aside)
            if moved is not None and moved.get("run") != holder.get("run"):  # a fresh lock: put it back
                os.rename(aside, path)
                return
            os.remove(aside)
            return
        current = self._holder()
        if current is not None and current.get("run") == holder.get("run"):
            storage.remove(self.uri)


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"{holder.get('user', '?')}@{holder.get('host', '?')} pid {holder.get('pid', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _s3_put_if_absent(uri: str, data: bytes) -> bool | None:
    """PUT with If-None-Match: * (S3 conditional create). True: created; False: it exists; None: unsupported."""
    try:
        import botocore.session
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        return None
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    bucket = bucket.rsplit("@", 1)[-1]
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, region_name=os.environ.get("AWS_REGION")
    )
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return False
        if code in ("NotImplemented", "InvalidArgument") or status == 501:
            return None
        raise

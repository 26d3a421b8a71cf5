"""No silent stall: every stage runs under `watch`, which bounds how long it may go without progress and
turns whatever storage failure ends it into one clear error.

- Ray Data executions (read, decode, embed, write) fail when for `stall_seconds` no operator takes or
  moves a block, finishes a task or starts an actor, while none is still starting (`StallGuard`, an
  execution callback); Ray's own guard stays at its default (30 min) for actors that never get a CPU/GPU.
  Ray's I/O retries also cover HTTP 500/502/504.
- Driver-side storage calls are bounded by `storage.retry` (tries and `stall_seconds`) and the SDK's timeouts.
- On the way out, an error whose cause is a stall or a transient storage error becomes `StallError` or
  `storage.TransientStorageError`: one line naming the stage, the object or endpoint, and the error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data.exceptions import ExecutionTimeoutError
from ray.exceptions import RayError

from adq_ray import storage
from adq_ray.config import Config
from adq_ray.errors import UserError

log = logging.getLogger("adq_ray")
# Ray Data retries writes and reads whose error contains one of these (its defaults cover 503 and throttling).
RETRIED_IO_ERRORS = (
    "AWS Error UNKNOWN (HTTP status 500)",
    "AWS Error UNKNOWN (HTTP status 502)",
    "AWS Error UNKNOWN (HTTP status 504)",
    "AWS Error REQUEST_TIMEOUT",
)
_PROBE = storage.RetryPolicy(attempts=1, connect_timeout=3.0, request_timeout=5.0, deadline=0.0)


STALL_KEY = "adq_ray.stall_seconds"  # DataContext config read by `StallGuard` (absent or <= 0: off)


class StallError(UserError):
    """A stage made no progress for `stall_seconds`: it is stopped, nothing is committed."""


class Stalled(ExecutionTimeoutError):
    """Raised inside Ray Data's scheduling loop by `StallGuard`; `translate` makes it a `StallError`.

    A kind of Ray's own no-progress error, so Ray Data reports it as actionable, not as an internal bug.
    """


class StallGuard(ExecutionCallback):
    """Stops a Ray Data execution that makes no progress for `stall_seconds` (checked every scheduling step).

    Progress: an operator's output taken, blocks entering or leaving its queues, a task finished, an actor
    started or lost. While any actor is still starting (model download, imports) the clock does not run.
    Ray Data instantiates it with no arguments (`DataContext.custom_execution_callback_classes`).
    """

    def __init__(self) -> None:
        self._limit = float(DataContext.get_current().get_config(STALL_KEY, 0) or 0)
        self._last: Any = None
        self._since = time.monotonic()

    def on_execution_step(self, executor: Any) -> None:
        if self._limit <= 0:
            return
        topology = getattr(executor, "_topology", None) or {}
        state, starting = [], False
        for op, op_state in topology.items():
            actors = op.get_actor_info()
            starting |= actors.pending > 0
            state.append(
                (
                    op.metrics.num_outputs_taken,
                    op.metrics.num_tasks_finished,
                    op_state.total_enqueued_input_blocks(),
                    op_state.total_enqueued_output_blocks(),
                    actors.running,
                )
            )
        now = time.monotonic()
        if starting or state != self._last:
            self._last, self._since = state, now
        elif now - self._since >= self._limit:
            busy = [f"{op.name} ({op.num_active_tasks()} task(s) running)" for op in topology if op.num_active_tasks()]
            raise Stalled(f"waiting on {', '.join(busy) or 'nothing running'}")


@contextlib.contextmanager
def watch(config: Config, stage: str) -> Iterator[None]:
    """Run a stage's body under the run's retry policy and stall limit; translate how it fails."""
    storage.configure(storage.RetryPolicy.of(config))
    context = DataContext.get_current()
    saved = (
        context.get_config(STALL_KEY),
        list(context.retried_io_errors),
        context.custom_execution_callback_classes,
        context.raise_original_map_exception,
    )
    context.set_config(STALL_KEY, config.stall_seconds)
    context.raise_original_map_exception = True  # a task's StorageError reaches `translate` (not just its text)
    context.retried_io_errors = [*saved[1], *(e for e in RETRIED_IO_ERRORS if e not in saved[1])]
    if StallGuard not in saved[2]:
        context.custom_execution_callback_classes = [*saved[2], StallGuard]
    try:
        yield
    except Exception as err:
        clear = translate(err, config, stage)
        if clear is None:
            raise
        # The store is failing: the cleanup that follows (staging, lock) tries each call once, not for minutes.
        storage.configure(dataclasses.replace(storage.policy(), attempts=1, deadline=0.0))
        raise clear from err
    finally:
        context.set_config(STALL_KEY, saved[0])
        context.retried_io_errors, context.custom_execution_callback_classes = saved[1], saved[2]
        context.raise_original_map_exception = saved[3]


def translate(err: BaseException, config: Config, stage: str) -> Exception | None:
    """The one-line error for a stage that failed because of a stall or of storage (None: leave `err` as is)."""
    if isinstance(err, UserError) and not isinstance(err, RayError):
        return None  # already one clear line (an inner `watch`, a refusal, a config error)
    chain = [cause for cause in _causes(err) if not isinstance(cause, RayError)]  # Ray's wrappers: their `cause`
    where = f"stage {stage}{_endpoints(config)}"
    for cause in chain:
        if isinstance(cause, storage.StorageError):
            return type(cause)(f"{where}: {cause.what}", cause.error, cause.failed, cause.tries, cause.seconds)
    stalls = [cause for cause in chain if isinstance(cause, (Stalled, ExecutionTimeoutError))]
    if stalls:
        detail = str(stalls[0]).splitlines()[0] if isinstance(stalls[0], Stalled) else "Ray Data's no-progress guard"
        return StallError(
            f"stage {stage} made no progress for {config.stall_seconds:.0f} s (stall_seconds) and was stopped, "
            f"{detail}; nothing was committed; {_health(config)}"
        )
    for cause in chain:
        if isinstance(cause, OSError) and storage.is_transient(cause):
            return storage.TransientStorageError(where, str(cause), 1, config.storage_attempts)
    return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    """`err` and everything it wraps: __cause__, __context__, and a Ray task error's `cause`."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]


def _endpoints(config: Config) -> str:
    """ " (endpoint <url>)" for the run's remote locations ("" when all are local)."""
    remote = dict.fromkeys(storage.endpoint(u) for u in (config.input, config.output, config.cache_uri))
    remote.pop("local", None)
    return f" (endpoint {', '.join(remote)})" if remote else ""


def _health(config: Config) -> str:
    """What each object-store endpoint of the run says to one quick request (the likely reason for a stall)."""
    notes: dict[str, str] = {}
    for uri in (config.output, config.input, config.cache_uri):
        where = storage.endpoint(uri)
        if not storage.is_remote(uri) or where in notes:
            continue
        previous = storage.policy()
        storage.configure(_PROBE)
        try:
            fs, path = storage.resolve(uri)
            fs.get_file_info(path)
            notes[where] = f"endpoint {where} answers for {uri}"
        except OSError as probe:
            notes[where] = f"endpoint {where} fails for {uri}: {' '.join(str(probe).split())}"
        finally:
            storage.configure(previous)
    return "; ".join(notes.values()) or "the output and input are local (see the Ray logs)"

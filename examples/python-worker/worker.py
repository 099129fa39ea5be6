#!/usr/bin/env python3
"""An external Kairos worker in Python, speaking `kairos.v1.WorkerService`.

The protocol (``proto/kairos/v1/worker.proto`` is the contract):

1. ``RegisterWorker`` declares the worker, the job type it serves (with an
   optional JSON Schema for the payload) and its capacity. The node that
   answers holds the registration and returns a ``worker_id`` and a
   ``heartbeat_interval``: the worker must poll or heartbeat at least that
   often, or the node drops it after three silent intervals.
2. ``PollTask`` is a long poll on that node: it returns a task as soon as one
   is assigned, or an empty response after ``wait`` (at most 60 s).
   ``NOT_FOUND`` means the node no longer knows the worker (dropped, or the
   node restarted): register again. ``UNAVAILABLE`` means the node is down:
   register with the next endpoint.
3. A task is one attempt of one run. Its opaque ``task_token`` fences every
   answer: ``HeartbeatTask`` (every third of the task's
   ``heartbeat_timeout``) extends the lease and says whether the run was
   cancelled; ``CompleteTask`` records success or failure. Once the attempt
   is no longer current (lease expired, run cancelled or ended, newer attempt
   started) both are refused ``FAILED_PRECONDITION`` and change nothing: the
   worker stops the task and does not retry the call. A token the cluster
   never issued is refused ``INVALID_ARGUMENT``. Repeating a recorded result
   is acknowledged, so ``CompleteTask`` is safe to retry on ``UNAVAILABLE``.

Every call carries ``authorization: Bearer <secret>`` when a token is given.

This worker runs ``--capacity`` poll threads; each runs the tasks it receives
itself, with a heartbeat thread beside it. A task's payload is a JSON object
(every field optional)::

    {"sleep_ms": 0, "fail": "message", "non_retryable": false, "output": "text"}

It sleeps ``sleep_ms`` (waking early when cancelled: failure, kind
``cancelled``), then fails with ``fail`` if given (kind ``worker_error``),
else succeeds with ``output`` (default ``"ok <job_id> <run_id> <attempt>"``).

Stdout carries one JSON object per line (``registered``, ``task``, ``cancel``,
``completed``; ``replay`` for the ``complete-token`` command), flushed at
once, for programs and tests to follow; logs go to stderr. SIGTERM or SIGINT
stops polling, cancels the running tasks, completes them, and exits 0.

The gRPC stubs are generated from the repository's ``proto/`` into ``gen/``
beside this file on first run (and again whenever the proto or grpcio-tools
changes), so a clean checkout needs only ``pip install -r requirements.txt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

try:
    import grpc
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("worker.py: grpcio is missing: run `pip install -r requirements.txt`")

HERE = Path(__file__).resolve().parent
# The repository's proto/ (examples/python-worker/ -> repository root).
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
PROTO_FILE = "kairos/v1/worker.proto"

# Deadline of a unary call (register, heartbeat, complete).
UNARY_TIMEOUT = 10.0
# A long poll may take this much longer than its `wait` before it is given up.
POLL_SLACK = 15.0
# How long CompleteTask is retried while nodes are unreachable.
COMPLETE_PATIENCE = 120.0
# ... and how long once the worker is shutting down.
COMPLETE_PATIENCE_STOPPING = 10.0
# Shortest heartbeat pace.
MIN_HEARTBEAT = 0.05

Code = grpc.StatusCode
# Codes after which an idempotent call (heartbeat, complete) may go to the
# next endpoint.
NEXT_ENDPOINT = {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED}
# Codes after which CompleteTask is tried again (it is idempotent).
COMPLETE_RETRY = NEXT_ENDPOINT | {Code.UNKNOWN, Code.INTERNAL, Code.ABORTED, Code.RESOURCE_EXHAUSTED}
# Registration answers that no retry can fix: the worker stops.
REGISTER_FATAL = {
    Code.UNAUTHENTICATED,
    Code.PERMISSION_DENIED,
    Code.INVALID_ARGUMENT,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.UNIMPLEMENTED,
}
LEADER_HEADER = "x-kairos-leader"

log = logging.getLogger("kairos-worker")


# --------------------------------------------------------------------------
# Stubs


def load_stubs():
    """Returns the generated ``(worker_pb2, worker_pb2_grpc)`` modules.

    They are generated from ``$KAIROS_PROTO_DIR`` (default: the repository's
    ``proto/``) into ``$KAIROS_WORKER_GEN_DIR`` (default: ``gen/`` beside this
    file) when missing or stale: a stamp file records the proto's hash and
    the grpcio-tools and protobuf versions that made them.
    """
    proto_dir = Path(os.environ.get("KAIROS_PROTO_DIR") or DEFAULT_PROTO_DIR).resolve()
    gen_dir = Path(os.environ.get("KAIROS_WORKER_GEN_DIR") or HERE / "gen").resolve()
    proto = proto_dir / PROTO_FILE
    stamp_file = gen_dir / "STAMP"
    if not proto.is_file():
        if not (gen_dir / "kairos" / "v1" / "worker_pb2_grpc.py").is_file():
            raise SystemExit(f"worker.py: {proto} not found (set KAIROS_PROTO_DIR to the repository's proto/)")
        log.warning("%s not found; using the stubs already in %s", proto, gen_dir)
    else:
        stamp = _stub_stamp(proto)
        current = stamp_file.read_text() if stamp_file.is_file() else None
        if current != stamp:
            _generate(proto_dir, gen_dir)
            stamp_file.write_text(stamp)
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    from kairos.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402  (generated)

    return worker_pb2, worker_pb2_grpc


def _stub_stamp(proto: Path) -> str:
    """What the generated stubs depend on: the proto and the generator."""
    from importlib import metadata

    versions = []
    for package in ("grpcio-tools", "protobuf"):
        try:
            versions.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}==?")
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()
    return f"{digest} {' '.join(versions)}\n"


def _generate(proto_dir: Path, gen_dir: Path) -> None:
    """Runs grpc_tools.protoc into a temporary directory, then moves each file
    into ``gen_dir`` atomically (two workers starting at once both succeed)."""
    log.info("generating gRPC stubs from %s into %s", proto_dir / PROTO_FILE, gen_dir)
    gen_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=gen_dir))
    try:
        command = [
            sys.executable, "-m", "grpc_tools.protoc",
            "-I", str(proto_dir),
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO_FILE,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                "worker.py: generating the stubs failed (is grpcio-tools installed? "
                f"`pip install -r requirements.txt`):\n{done.stderr.strip()}"
            )
        for package in ("kairos", "kairos/v1"):
            # Regular packages, so that no other `kairos` on sys.path wins.
            (tmp / package / "__init__.py").write_text("")
        for source in sorted(tmp.rglob("*.py")):
            target = gen_dir / source.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# Output


class Events:
    """Writes one JSON object per line to stdout, flushed at once."""

    def __init__(self, stream=None):
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def emit(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


# --------------------------------------------------------------------------
# Connections


def parse_endpoints(values: list[str]) -> list[str]:
    """``HOST:PORT`` values (repeated and/or comma-separated, with an optional
    ``http://`` or ``https://`` prefix), in order, without duplicates."""
    endpoints = []
    for value in values:
        for part in value.split(","):
            part = part.strip().rstrip("/")
            if part and part not in endpoints:
                endpoints.append(part)
    return endpoints


class Fatal(Exception):
    """An error no retry can fix: the worker stops with status 1."""


class Connection:
    """Channels to the endpoints, and the credential every call carries.

    An endpoint is ``HOST:PORT``; ``https://`` asks for TLS (with the system's
    roots unless ``--tls-ca`` is given), and ``--tls-ca`` makes every endpoint
    TLS, as with the ``kairos`` CLI.
    """

    def __init__(self, endpoints: list[str], secret: Optional[str], tls_ca: Optional[bytes], stubs):
        if not endpoints:
            raise Fatal("no endpoint given")
        self.endpoints = endpoints
        self._tls_ca = tls_ca
        self._pb2_grpc = stubs[1]
        self._metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    @property
    def metadata(self):
        """The call metadata: the bearer token, if any."""
        return self._metadata

    def stub(self, endpoint: str):
        """A WorkerService stub for ``endpoint`` (channels are made once)."""
        address, tls = self._address(endpoint)
        with self._lock:
            channel = self._channels.get(endpoint)
            if channel is None:
                options = [
                    # Reconnect soon after a node comes back.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ]
                if tls:
                    credentials = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
                    channel = grpc.secure_channel(address, credentials, options=options)
                else:
                    channel = grpc.insecure_channel(address, options=options)
                self._channels[endpoint] = channel
        return self._pb2_grpc.WorkerServiceStub(channel)

    def _address(self, endpoint: str) -> tuple[str, bool]:
        for prefix, tls in (("http://", False), ("https://", True)):
            if endpoint.startswith(prefix):
                return endpoint[len(prefix):], tls or self._tls_ca is not None
        return endpoint, self._tls_ca is not None

    def call(self, rpc: Callable, start: int = 0):
        """Calls ``rpc(stub)`` on each endpoint in turn from index ``start``
        (and on a leader a node names) until one answers other than
        UNAVAILABLE or DEADLINE_EXCEEDED; raises the last error if none does.

        Only for idempotent calls (heartbeat, complete).
        """
        count = len(self.endpoints)
        queue = [self.endpoints[(start + i) % count] for i in range(count)]
        tried = set()
        last = None
        while queue:
            endpoint = queue.pop(0)
            if endpoint in tried:
                continue
            tried.add(endpoint)
            try:
                return rpc(self.stub(endpoint))
            except grpc.RpcError as error:
                if error.code() not in NEXT_ENDPOINT:
                    raise
                log.debug("%s: %s: %s", endpoint, error.code().name, error.details())
                last = error
                leader = _trailing(error, LEADER_HEADER)
                if leader and leader not in tried:
                    queue.insert(0, leader)
        raise last

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def _trailing(error: grpc.RpcError, key: str) -> Optional[str]:
    """A trailing metadata value of a failed call, if any."""
    trailing = getattr(error, "trailing_metadata", None)
    for k, v in (trailing() if callable(trailing) else None) or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


def _describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


class Backoff:
    """Bounded exponential back-off: 0.1 s doubling up to ``cap`` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 5.0):
        self.first, self.cap, self.next_delay = first, cap, first

    def next(self) -> float:
        delay = self.next_delay
        self.next_delay = min(self.cap, delay * 2)
        return delay

    def reset(self) -> None:
        self.next_delay = self.first


# --------------------------------------------------------------------------
# Registration


@dataclass(frozen=True)
class Session:
    """One registration: with which endpoint, under which id."""

    index: int  # into Connection.endpoints
    endpoint: str
    worker_id: str
    node_id: int
    heartbeat_interval: float  # seconds; 0 if the node gave none


class Registration:
    """The worker's current registration, renewed once by whichever poll
    thread first finds it stale (the others then use the new one)."""

    def __init__(self, conn: Connection, stubs, request, stop: threading.Event, events: Events):
        self._conn = conn
        self._pb2 = stubs[0]
        self._request = request
        self._stop = stop
        self._events = events
        self._lock = threading.Lock()
        self.current: Optional[Session] = None

    def register(self, start: int = 0) -> Optional[Session]:
        """Registers with the first endpoint that answers, round robin from
        ``start`` with bounded back-off between rounds. None once stopping;
        raises Fatal when a node refuses the registration for good."""
        with self._lock:
            return self._register(start)

    def renew(self, stale: Session, step: int) -> Optional[Session]:
        """Registers again, from endpoint ``stale.index + step``, unless
        another thread already replaced ``stale``."""
        with self._lock:
            if self.current is not stale:
                return self.current
            return self._register(stale.index + step)

    def _register(self, start: int) -> Optional[Session]:
        endpoints = self._conn.endpoints
        backoff = Backoff()
        attempt = 0
        while not self._stop.is_set():
            index = (start + attempt) % len(endpoints)
            endpoint = endpoints[index]
            attempt += 1
            try:
                reply = self._conn.stub(endpoint).RegisterWorker(
                    self._request, timeout=UNARY_TIMEOUT, metadata=self._conn.metadata
                )
            except grpc.RpcError as error:
                if error.code() in REGISTER_FATAL:
                    raise Fatal(f"RegisterWorker refused by {endpoint}: {_describe(error)}") from error
                log.warning("RegisterWorker with %s: %s", endpoint, _describe(error))
                if attempt % len(endpoints) == 0:
                    self._stop.wait(backoff.next())
                continue
            interval = reply.heartbeat_interval.ToTimedelta().total_seconds() if reply.HasField(
                "heartbeat_interval") else 0.0
            session = Session(index, endpoint, reply.worker_id, reply.node_id, interval)
            self.current = session
            log.info("registered with %s (node %d) as %s; heartbeat interval %.3fs",
                     endpoint, reply.node_id, reply.worker_id, interval)
            self._events.emit("registered", worker_id=reply.worker_id, node_id=reply.node_id, endpoint=endpoint)
            return session
        return None


# --------------------------------------------------------------------------
# Tasks


@dataclass
class Outcome:
    """What a task ends with: success(output) or failure(...)."""

    success: bool
    output: str = ""
    message: str = ""
    non_retryable: bool = False
    kind: str = ""


@dataclass(eq=False)
class RunningTask:
    """A task being run, and the event that cancels it."""

    task: object
    events: Events
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel_with(self, reason: str) -> None:
        """Sets the cancel event (once; emits the ``cancel`` line)."""
        with self._lock:
            if self.cancel.is_set():
                return
            self.cancel.set()
        log.info("run %d attempt %d: cancelled (%s)", self.task.run_id, self.task.attempt, reason)
        self.events.emit("cancel", run_id=self.task.run_id)


def execute(task, cancel: threading.Event) -> Outcome:
    """Runs a task as its payload says (see the module's docstring)."""
    default_output = f"ok {task.job_id} {task.run_id} {task.attempt}"
    try:
        payload = json.loads(task.payload.decode("utf-8")) if task.payload.strip() else {}
    except (UnicodeDecodeError, ValueError) as error:
        return Outcome(False, message=f"payload is not JSON: {error}", non_retryable=True, kind="bad_payload")
    if not isinstance(payload, dict):
        return Outcome(False, message="payload is not a JSON object", non_retryable=True, kind="bad_payload")
    sleep_ms = payload.get("sleep_ms", 0)
    fail = payload.get("fail")
    non_retryable = payload.get("non_retryable", False)
    output = payload.get("output", default_output)
    problems = []
    if not isinstance(sleep_ms, int) or isinstance(sleep_ms, bool) or sleep_ms < 0:
        problems.append("sleep_ms must be an integer >= 0")
    if fail is not None and not isinstance(fail, str):
        problems.append("fail must be a string")
    if not isinstance(non_retryable, bool):
        problems.append("non_retryable must be a boolean")
    if not isinstance(output, str):
        problems.append("output must be a string")
    if problems:
        return Outcome(False, message="payload: " + "; ".join(problems), non_retryable=True, kind="bad_payload")
    if cancel.wait(sleep_ms / 1000.0):
        return Outcome(False, message="cancelled", kind="cancelled")
    if fail is not None:
        return Outcome(False, message=fail, non_retryable=non_retryable, kind="worker_error")
    return Outcome(True, output=output)


# --------------------------------------------------------------------------
# The worker


class Worker:
    """Poll threads, each running the tasks it receives, until stopped."""

    def __init__(self, conn: Connection, stubs, args, events: Events, stop: threading.Event):
        self.conn = conn
        self.pb2 = stubs[0]
        self.args = args
        self.events = events
        self.stop = stop
        self.fatal: Optional[BaseException] = None
        request = self.pb2.RegisterWorkerRequest(
            worker_name=args.name,
            capacity=args.capacity,
            job_types=[self.pb2.JobTypeSpec(name=args.type, description=args.description or "",
                                            payload_schema=args.schema_text or "")],
        )
        self.registration = Registration(conn, stubs, request, stop, events)
        self._lock = threading.Lock()
        self._polls: set = set()
        self._tasks: set = set()
        self._threads: list[threading.Thread] = []

    # -- lifecycle

    def run(self) -> int:
        """Registers, polls until SIGTERM/SIGINT (or a fatal error), winds
        down, and returns the exit status."""
        try:
            if self.registration.register() is None:
                return 0
        except Fatal as error:
            log.error("%s", error)
            return 1
        for slot in range(self.args.capacity):
            thread = threading.Thread(target=self._guard, args=(self._poll_loop, slot), name=f"poll-{slot}")
            thread.start()
            self._threads.append(thread)
        while not self.stop.wait(1.0):
            pass
        self.shutdown()
        for thread in self._threads:
            thread.join()
        if self.fatal is not None:
            log.error("stopped: %s", self.fatal)
            return 1
        log.info("stopped")
        return 0

    def shutdown(self) -> None:
        """Stops polling and cancels the running tasks (they then complete)."""
        self.stop.set()
        with self._lock:
            polls, tasks = list(self._polls), list(self._tasks)
        for future in polls:
            future.cancel()
        for running in tasks:
            running.cancel_with("worker stopping")

    def _guard(self, body: Callable, *args) -> None:
        """Runs a thread's body; an unexpected error stops the worker."""
        try:
            body(*args)
        except Fatal as error:
            self.fatal = error
            self.stop.set()
        except Exception as error:  # noqa: BLE001 - logged, and the worker stops
            log.exception("%s failed", threading.current_thread().name)
            self.fatal = error
            self.stop.set()

    # -- polling

    def _poll_loop(self, slot: int) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            session = self.registration.current
            if session is None:
                return
            wait = self.args.poll_wait
            if session.heartbeat_interval > 0:
                # "Poll or heartbeat at least this often."
                wait = min(wait, session.heartbeat_interval)
            request = self.pb2.PollTaskRequest(worker_id=session.worker_id, job_types=[self.args.type])
            request.wait.FromNanoseconds(int(wait * 1e9))
            future = self.conn.stub(session.endpoint).PollTask.future(
                request, timeout=wait + POLL_SLACK, metadata=self.conn.metadata
            )
            with self._lock:
                self._polls.add(future)
            if self.stop.is_set():
                future.cancel()
            try:
                reply = future.result()
            except grpc.FutureCancelledError:
                continue  # stopping
            except grpc.RpcError as error:
                code = error.code()
                if code == Code.CANCELLED and self.stop.is_set():
                    continue
                if code == Code.NOT_FOUND:
                    log.warning("PollTask on %s: %s: registering again", session.endpoint, _describe(error))
                    self.registration.renew(session, 0)
                elif code in NEXT_ENDPOINT:
                    log.warning("PollTask on %s: %s: registering with the next endpoint",
                                session.endpoint, _describe(error))
                    self.registration.renew(session, 1)
                else:
                    log.warning("PollTask on %s: %s", session.endpoint, _describe(error))
                    self.stop.wait(backoff.next())
                continue
            finally:
                with self._lock:
                    self._polls.discard(future)
            backoff.reset()
            if reply.HasField("task"):
                self._run_task(reply.task, session)

    # -- one task

    def _run_task(self, task, session: Session) -> None:
        nominal = task.nominal_time.ToJsonString() if task.HasField("nominal_time") else None
        log.info("run %d attempt %d of job %s (%s)", task.run_id, task.attempt, task.job_id, task.job_type)
        self.events.emit("task", run_id=task.run_id, job_id=task.job_id, attempt=task.attempt,
                         nominal_time=nominal, token=task.task_token.hex())
        running = RunningTask(task, self.events)
        with self._lock:
            self._tasks.add(running)
        if self.stop.is_set():
            running.cancel_with("worker stopping")
        heartbeat = threading.Thread(target=self._guard, args=(self._heartbeat_loop, running, session),
                                     name=f"heartbeat-{task.run_id}")
        heartbeat.start()
        try:
            outcome = execute(task, running.cancel)
        finally:
            running.done.set()
            heartbeat.join()
        result = self._complete(running, outcome, session)
        with self._lock:
            self._tasks.discard(running)
        log.info("run %d attempt %d completed (%s): %s", task.run_id, task.attempt,
                 "success" if outcome.success else f"failure {outcome.kind}", result)
        self.events.emit("completed", run_id=task.run_id, attempt=task.attempt, result=result)

    def _heartbeat_loop(self, running: RunningTask, session: Session) -> None:
        """Heartbeats every third of the task's lease (and at least every
        worker heartbeat interval) until the task is done; a cancel request,
        FAILED_PRECONDITION or INVALID_ARGUMENT cancels the task."""
        task = running.task
        lease = task.heartbeat_timeout.ToTimedelta().total_seconds() if task.HasField("heartbeat_timeout") else 0.0
        pace = lease / 3 if lease > 0 else (session.heartbeat_interval or 10.0)
        if session.heartbeat_interval > 0:
            pace = min(pace, session.heartbeat_interval)
        pace = max(MIN_HEARTBEAT, pace)
        request = self.pb2.HeartbeatTaskRequest(task_token=task.task_token)
        while not running.done.wait(pace):
            try:
                reply = self.conn.call(
                    lambda stub: stub.HeartbeatTask(request, timeout=UNARY_TIMEOUT, metadata=self.conn.metadata),
                    self._endpoint_index(session),
                )
            except grpc.RpcError as error:
                if error.code() in (Code.FAILED_PRECONDITION, Code.INVALID_ARGUMENT):
                    log.warning("HeartbeatTask for run %d: %s", task.run_id, _describe(error))
                    running.cancel_with(error.code().name)
                    return
                log.warning("HeartbeatTask for run %d: %s (will try again)", task.run_id, _describe(error))
                continue
            if reply.cancel_requested:
                running.cancel_with("cancel requested")
                return

    def _endpoint_index(self, session: Session) -> int:
        """Where a task's calls start: the node of the current registration
        (the task's own one before any re-registration)."""
        return (self.registration.current or session).index

    def _complete(self, running: RunningTask, outcome: Outcome, session: Session) -> str:
        """Sends CompleteTask, retried across endpoints while they are
        unreachable; returns "ok" or the final status code's name."""
        pb2 = self.pb2
        request = pb2.CompleteTaskRequest(task_token=running.task.task_token)
        if outcome.success:
            request.success.CopyFrom(pb2.TaskSuccess(output=outcome.output))
        else:
            request.failure.CopyFrom(pb2.TaskFailure(message=outcome.message, non_retryable=outcome.non_retryable,
                                                     kind=outcome.kind, output=outcome.output))
        started = time.monotonic()
        backoff = Backoff(cap=2.0)
        while True:
            try:
                self.conn.call(
                    lambda stub: stub.CompleteTask(request, timeout=UNARY_TIMEOUT, metadata=self.conn.metadata),
                    self._endpoint_index(session),
                )
                return "ok"
            except grpc.RpcError as error:
                patience = COMPLETE_PATIENCE_STOPPING if self.stop.is_set() else COMPLETE_PATIENCE
                if error.code() not in COMPLETE_RETRY or time.monotonic() - started > patience:
                    log.warning("CompleteTask for run %d: %s", running.task.run_id, _describe(error))
                    return error.code().name
                log.warning("CompleteTask for run %d: %s (trying again)", running.task.run_id, _describe(error))
                time.sleep(backoff.next())


# --------------------------------------------------------------------------
# complete-token


def complete_token(conn: Connection, stubs, token_hex: str, output: str, events: Events) -> int:
    """Sends CompleteTask(success) with a saved token, once per endpoint at
    most, and prints the ``replay`` line."""
    pb2 = stubs[0]
    try:
        token = bytes.fromhex(token_hex)
    except ValueError as error:
        log.error("complete-token: not hex: %s", error)
        return 2
    request = pb2.CompleteTaskRequest(task_token=token, success=pb2.TaskSuccess(output=output))
    try:
        conn.call(lambda stub: stub.CompleteTask(request, timeout=UNARY_TIMEOUT, metadata=conn.metadata))
        result, message = "ok", ""
    except grpc.RpcError as error:
        result, message = error.code().name, error.details() or ""
    events.emit("replay", result=result, message=message)
    return 0


# --------------------------------------------------------------------------
# Command line


def _connection_options(parser: argparse.ArgumentParser, sub: bool) -> None:
    # Options a subcommand repeats keep SUPPRESS defaults, so that they do not
    # overwrite what was given before the subcommand.
    default = argparse.SUPPRESS if sub else None
    parser.add_argument("--endpoint", action="append", dest="sub_endpoint" if sub else "endpoint",
                        default=default, metavar="HOST:PORT",
                        help="a node's gRPC address (repeatable or comma-separated; http:// or https:// optional)")
    parser.add_argument("--token-file", default=default, metavar="PATH",
                        help="file holding the token's secret (else $KAIROS_TOKEN, else $KAIROS_TOKEN_FILE)")
    parser.add_argument("--tls-ca", default=default, metavar="PEM",
                        help="speak TLS, verifying the nodes against this CA (else $KAIROS_TLS_CA)")


def _run_options(parser: argparse.ArgumentParser, sub: bool) -> None:
    def default(value):
        return argparse.SUPPRESS if sub else value

    parser.add_argument("--type", default=default(None), metavar="NAME", help="the job type served")
    parser.add_argument("--schema", default=default(None), metavar="FILE",
                        help="JSON Schema file the type's payloads must satisfy")
    parser.add_argument("--description", default=default(None), metavar="TEXT", help="the type's description")
    parser.add_argument("--capacity", type=int, default=default(4), metavar="N",
                        help="tasks run at once (poll threads; default 4)")
    parser.add_argument("--name", default=default(None),
                        help="worker name shown in `kairos worker list` (default python@HOST/PID)")
    parser.add_argument("--poll-wait", type=float, default=default(30.0), metavar="SECONDS",
                        help="longest wait of one long poll (default 30, at most 60)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="An external Kairos worker (kairos.v1.WorkerService) serving one job type.",
        epilog="Without a command, `run` is meant: worker.py --endpoint HOST:PORT --type NAME ...",
    )
    _connection_options(parser, sub=False)
    _run_options(parser, sub=False)
    commands = parser.add_subparsers(dest="command", metavar="{run,complete-token}")
    run = commands.add_parser("run", help="register and run tasks (the default)")
    _connection_options(run, sub=True)
    _run_options(run, sub=True)
    replay = commands.add_parser("complete-token", help="send CompleteTask(success) with a saved task token")
    _connection_options(replay, sub=True)
    replay.add_argument("token", metavar="HEX", help="the task token, in hex (as in the `task` line)")
    replay.add_argument("--output", default="replayed", help="the success output (default 'replayed')")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parses and checks the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = args.command or "run"
    args.endpoints = parse_endpoints((args.endpoint or []) + getattr(args, "sub_endpoint", []))
    if not args.endpoints:
        parser.error("--endpoint is required")
    if args.command == "run":
        if not args.type:
            parser.error("--type is required")
        if not 1 <= args.capacity <= 4096:
            parser.error("--capacity must be 1 to 4096")
        if not 0 < args.poll_wait <= 60:
            parser.error("--poll-wait must be more than 0 and at most 60 seconds")
        args.name = args.name or f"python@{socket.gethostname()}/{os.getpid()}"
        args.schema_text = None
        if args.schema:
            try:
                args.schema_text = Path(args.schema).read_text()
                json.loads(args.schema_text)
            except (OSError, ValueError) as error:
                parser.error(f"--schema {args.schema}: {error}")
    return args


def read_secret(token_file: Optional[str]) -> Optional[str]:
    """The bearer secret: --token-file, else $KAIROS_TOKEN, else the file in
    $KAIROS_TOKEN_FILE; None for no credential."""
    if token_file:
        return Path(token_file).read_text().strip() or None
    if os.environ.get("KAIROS_TOKEN"):
        return os.environ["KAIROS_TOKEN"].strip()
    if os.environ.get("KAIROS_TOKEN_FILE"):
        return Path(os.environ["KAIROS_TOKEN_FILE"]).read_text().strip() or None
    return None


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("KAIROS_WORKER_LOG", "INFO").upper(),
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    args = parse_args(argv)
    try:
        secret = read_secret(args.token_file)
        tls_path = args.tls_ca or os.environ.get("KAIROS_TLS_CA")
        tls_ca = Path(tls_path).read_bytes() if tls_path else None
    except OSError as error:
        log.error("%s", error)
        return 2
    stubs = load_stubs()
    events = Events()
    conn = Connection(args.endpoints, secret, tls_ca, stubs)
    try:
        if args.command == "complete-token":
            return complete_token(conn, stubs, args.token, args.output, events)
        stop = threading.Event()
        signals = {"count": 0}

        def on_signal(number, _frame):
            signals["count"] += 1
            if signals["count"] > 1:
                log.error("second %s: exiting now", signal.Signals(number).name)
                os._exit(1)
            log.info("%s: stopping", signal.Signals(number).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        return Worker(conn, stubs, args, events, stop).run()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())

"""Tests of worker.py against fake WorkerService nodes (grpc servers in this
process), running the worker as a child process as a user would.

Run from this directory: ``python3 -m unittest -v test_worker``. Every wait
is bounded; synchronisation is by queues and events, not sleeps.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
from concurrent import futures
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import worker  # noqa: E402

pb2, pb2_grpc = worker.load_stubs()

WAIT = 15.0  # the longest any single step may take
SECRET = "s3cret-for-tests"


class FakeNode(pb2_grpc.WorkerServiceServicer):
    """One node of a fake cluster: registers workers, hands out the tasks a
    test puts in ``tasks``, and records every call in ``calls``."""

    def __init__(self, node_id: int, secret: str | None = SECRET, heartbeat_interval: float = 10.0):
        self.node_id = node_id
        self.secret = secret
        self.heartbeat_interval = heartbeat_interval
        self.lock = threading.Lock()
        self.workers: dict[str, pb2.RegisterWorkerRequest] = {}
        self.ids = itertools.count(1)
        self.tasks: queue.Queue = queue.Queue()
        self.calls: queue.Queue = queue.Queue()  # (method, request)
        self.completes: queue.Queue = queue.Queue()
        self.authorizations: list = []
        self.cancel_requested = threading.Event()
        self.heartbeat_code: grpc.StatusCode | None = None
        self.complete_code: grpc.StatusCode | None = None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        pb2_grpc.add_WorkerServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(WAIT)

    def forget_workers(self) -> None:
        """As if the node restarted: polls get NOT_FOUND."""
        with self.lock:
            self.workers.clear()

    def _check(self, method: str, request, context) -> None:
        authorization = dict(context.invocation_metadata()).get("authorization")
        with self.lock:
            self.authorizations.append(authorization)
        self.calls.put((method, request))
        if self.secret is not None and authorization != f"Bearer {self.secret}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad credential")

    def RegisterWorker(self, request, context):
        self._check("RegisterWorker", request, context)
        with self.lock:
            worker_id = f"w{self.node_id}-{next(self.ids)}"
            self.workers[worker_id] = request
        reply = pb2.RegisterWorkerResponse(worker_id=worker_id, node_id=self.node_id)
        reply.heartbeat_interval.FromNanoseconds(int(self.heartbeat_interval * 1e9))
        return reply

    def PollTask(self, request, context):
        self._check("PollTask", request, context)
        with self.lock:
            known = request.worker_id in self.workers
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown worker {request.worker_id}")
        wait = request.wait.ToTimedelta().total_seconds() if request.HasField("wait") else 60.0
        try:
            task = self.tasks.get(timeout=min(wait, 60.0))
        except queue.Empty:
            return pb2.PollTaskResponse()
        if not context.is_active():  # the poll was cancelled: keep the task
            self.tasks.put(task)
            return pb2.PollTaskResponse()
        return pb2.PollTaskResponse(task=task)

    def HeartbeatTask(self, request, context):
        self._check("HeartbeatTask", request, context)
        if self.heartbeat_code is not None:
            context.abort(self.heartbeat_code, "attempt no longer current")
        return pb2.HeartbeatTaskResponse(cancel_requested=self.cancel_requested.is_set())

    def CompleteTask(self, request, context):
        self._check("CompleteTask", request, context)
        if self.complete_code is not None:
            context.abort(self.complete_code, "refused by the fake")
        self.completes.put(request)
        return pb2.CompleteTaskResponse()


def make_task(run_id: int, payload=None, heartbeat_timeout: float = 0.3, attempt: int = 1):
    """A task of job `job-a` with token `tok-<run_id>-<attempt>`."""
    task = pb2.Task(
        task_token=f"tok-{run_id}-{attempt}".encode(),
        job_id="job-a",
        run_id=run_id,
        attempt=attempt,
        job_type="example.echo",
        payload=b"" if payload is None else json.dumps(payload).encode(),
        idempotency_key="job-a:2023-11-14T22:13:20Z",
    )
    task.nominal_time.FromSeconds(1700000000)
    task.heartbeat_timeout.FromNanoseconds(int(heartbeat_timeout * 1e9))
    return task


def dead_endpoint() -> str:
    """An address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class WorkerProcess:
    """worker.py as a child process; its stdout lines are parsed into events."""

    def __init__(self, args: list[str], token_file: str | None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
        command = [sys.executable, str(HERE / "worker.py"), *args]
        if token_file:
            command += ["--token-file", token_file]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, event: str, timeout: float = WAIT, **match) -> dict:
        """The first not yet expected `event` line whose fields include
        `match`, waiting at most `timeout` seconds."""
        for index, seen in enumerate(self.seen):
            if seen["event"] == event and all(seen.get(k) == v for k, v in match.items()):
                return self.seen.pop(index)
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    line = self.lines.get(timeout=0.1)
                except queue.Empty:
                    continue
                if line is None:
                    raise AssertionError(f"worker exited before {event} {match}:\n{self.log()}")
                parsed = json.loads(line)
                if parsed["event"] == event and all(parsed.get(k) == v for k, v in match.items()):
                    return parsed
                self.seen.append(parsed)
        finally:
            timer.cancel()
        raise AssertionError(f"no {event} {match} within {timeout}s; seen {self.seen}:\n{self.log()}")

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signals the worker and returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(WAIT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        self.process.stdout.close()
        self.stderr.close()


class WorkerTest(unittest.TestCase):
    def setUp(self):
        self.nodes: list[FakeNode] = []
        self.workers: list[WorkerProcess] = []
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.token_file = os.path.join(directory.name, "root.token")
        Path(self.token_file).write_text(SECRET + "\n")
        self.schema = str(HERE / "schema.json")

    def tearDown(self):
        for process in self.workers:
            process.close()
        for node in self.nodes:
            node.stop()

    def node(self, node_id: int = 1, **kwargs) -> FakeNode:
        node = FakeNode(node_id, **kwargs)
        self.nodes.append(node)
        return node

    def start(self, endpoints: list[str], *extra: str, token: bool = True) -> WorkerProcess:
        args = []
        for endpoint in endpoints:
            args += ["--endpoint", endpoint]
        args += ["--type", "example.echo", "--schema", self.schema, "--capacity", "2", "--poll-wait", "1",
                 "--name", "test-worker", *extra]
        process = WorkerProcess(args, self.token_file if token else None)
        self.workers.append(process)
        return process

    def next_call(self, node: FakeNode, method: str):
        """The next call of `method` on `node` (others are skipped)."""
        stop = threading.Event()
        timer = threading.Timer(WAIT, stop.set)
        timer.start()
        try:
            while not stop.is_set():
                try:
                    name, request = node.calls.get(timeout=0.1)
                except queue.Empty:
                    continue
                if name == method:
                    return request
        finally:
            timer.cancel()
        self.fail(f"no {method} on node {node.node_id} within {WAIT}s")

    # ------------------------------------------------------------------

    def test_register_poll_run_complete(self):
        node = self.node()
        process = self.start([f"http://{node.endpoint}"])
        registered = process.expect("registered")
        self.assertEqual(registered["node_id"], 1)
        self.assertEqual(registered["endpoint"], f"http://{node.endpoint}")
        register = self.next_call(node, "RegisterWorker")
        self.assertEqual(register.worker_name, "test-worker")
        self.assertEqual(register.capacity, 2)
        self.assertEqual(register.job_types[0].name, "example.echo")
        self.assertEqual(json.loads(register.job_types[0].payload_schema), json.loads(Path(self.schema).read_text()))
        poll = self.next_call(node, "PollTask")
        self.assertEqual(poll.worker_id, registered["worker_id"])
        self.assertEqual(list(poll.job_types), ["example.echo"])
        self.assertAlmostEqual(poll.wait.ToTimedelta().total_seconds(), 1.0)

        node.tasks.put(make_task(7, {"output": "hello"}))
        task = process.expect("task", run_id=7)
        self.assertEqual(task, {"event": "task", "run_id": 7, "job_id": "job-a", "attempt": 1,
                                "nominal_time": "2023-11-14T22:13:20Z", "token": b"tok-7-1".hex()})
        completed = process.expect("completed", run_id=7)
        self.assertEqual(completed["result"], "ok")
        self.assertEqual(completed["attempt"], 1)
        complete = node.completes.get(timeout=WAIT)
        self.assertEqual(complete.task_token, b"tok-7-1")
        self.assertEqual(complete.WhichOneof("result"), "success")
        self.assertEqual(complete.success.output, "hello")

        # Default output, and a failure.
        node.tasks.put(make_task(8, None, attempt=3))
        process.expect("completed", run_id=8)
        complete = node.completes.get(timeout=WAIT)
        self.assertEqual(complete.success.output, "ok job-a 8 3")
        node.tasks.put(make_task(9, {"fail": "boom", "non_retryable": True}))
        process.expect("completed", run_id=9, result="ok")
        complete = node.completes.get(timeout=WAIT)
        self.assertEqual(complete.WhichOneof("result"), "failure")
        self.assertEqual((complete.failure.message, complete.failure.kind, complete.failure.non_retryable),
                         ("boom", "worker_error", True))

        self.assertEqual(process.stop(), 0, process.log())
        # Every call carried the bearer token.
        with node.lock:
            self.assertTrue(node.authorizations)
            self.assertEqual(set(node.authorizations), {f"Bearer {SECRET}"})

    def test_bad_payload_fails_non_retryable(self):
        node = self.node()
        process = self.start([node.endpoint])
        process.expect("registered")
        node.tasks.put(make_task(3, {"sleep_ms": "soon"}))
        process.expect("completed", run_id=3, result="ok")
        complete = node.completes.get(timeout=WAIT)
        self.assertEqual((complete.failure.kind, complete.failure.non_retryable), ("bad_payload", True))
        self.assertEqual(process.stop(), 0)

    def test_heartbeat_cancel_wakes_a_sleeping_task(self):
        node = self.node()
        process = self.start([node.endpoint])
        process.expect("registered")
        node.tasks.put(make_task(11, {"sleep_ms": 600000}, heartbeat_timeout=0.3))
        process.expect("task", run_id=11)
        heartbeat = self.next_call(node, "HeartbeatTask")
        self.assertEqual(heartbeat.task_token, b"tok-11-1")
        node.cancel_requested.set()
        process.expect("cancel", run_id=11)
        process.expect("completed", run_id=11, result="ok")
        complete = node.completes.get(timeout=WAIT)
        self.assertEqual(complete.WhichOneof("result"), "failure")
        self.assertEqual((complete.failure.kind, complete.failure.message), ("cancelled", "cancelled"))
        self.assertEqual(process.stop(), 0)

    def test_heartbeat_failed_precondition_cancels_and_completion_is_refused(self):
        node = self.node()
        process = self.start([node.endpoint])
        process.expect("registered")
        node.heartbeat_code = grpc.StatusCode.FAILED_PRECONDITION
        node.complete_code = grpc.StatusCode.FAILED_PRECONDITION
        node.tasks.put(make_task(12, {"sleep_ms": 600000}, heartbeat_timeout=0.3))
        process.expect("cancel", run_id=12)
        completed = process.expect("completed", run_id=12)
        self.assertEqual(completed["result"], "FAILED_PRECONDITION")
        # Refused once: not retried.
        node.complete_code = None
        node.tasks.put(make_task(13, {}))
        process.expect("completed", run_id=13, result="ok")
        self.assertEqual(node.completes.get(timeout=WAIT).task_token, b"tok-13-1")
        completes = []
        while not node.calls.empty():
            method, request = node.calls.get_nowait()
            if method == "CompleteTask":
                completes.append(request.task_token)
        self.assertEqual(completes, [b"tok-12-1", b"tok-13-1"])
        self.assertEqual(process.stop(), 0)

    def test_not_found_registers_again(self):
        node = self.node()
        process = self.start([node.endpoint])
        first = process.expect("registered")
        node.forget_workers()
        second = process.expect("registered")
        self.assertNotEqual(first["worker_id"], second["worker_id"])
        node.tasks.put(make_task(21, {}))
        process.expect("completed", run_id=21, result="ok")
        self.assertEqual(process.stop(), 0)

    def test_dead_first_endpoint_then_the_second(self):
        node = self.node(2)
        dead = dead_endpoint()
        process = self.start([f"{dead},{node.endpoint}"])
        registered = process.expect("registered")
        self.assertEqual((registered["endpoint"], registered["node_id"]), (node.endpoint, 2))
        node.tasks.put(make_task(31, {}))
        process.expect("completed", run_id=31, result="ok")
        self.assertEqual(process.stop(), 0)

    def test_node_down_registers_with_the_next(self):
        first, second = self.node(1), self.node(2)
        process = self.start([first.endpoint, second.endpoint])
        self.assertEqual(process.expect("registered")["node_id"], 1)
        first.stop()
        self.assertEqual(process.expect("registered")["node_id"], 2)
        second.tasks.put(make_task(41, {}))
        process.expect("completed", run_id=41, result="ok")
        self.assertEqual(process.stop(), 0)

    def test_complete_retried_on_the_next_endpoint_when_unavailable(self):
        first, second = self.node(1), self.node(2)
        first.complete_code = grpc.StatusCode.UNAVAILABLE
        process = self.start([first.endpoint, second.endpoint])
        self.assertEqual(process.expect("registered")["node_id"], 1)
        first.tasks.put(make_task(51, {"output": "moved"}))
        process.expect("completed", run_id=51, result="ok")
        self.assertEqual(second.completes.get(timeout=WAIT).success.output, "moved")
        self.assertEqual(process.stop(), 0)

    def test_missing_token_is_refused(self):
        node = self.node()
        process = self.start([node.endpoint], token=False)
        self.assertEqual(process.process.wait(WAIT), 1)
        self.assertIn("UNAUTHENTICATED", process.log())

    def test_sigterm_cancels_running_tasks_completes_them_and_exits_0(self):
        node = self.node()
        process = self.start([node.endpoint])
        process.expect("registered")
        node.tasks.put(make_task(61, {"sleep_ms": 600000}, heartbeat_timeout=30))
        process.expect("task", run_id=61)
        self.assertEqual(process.stop(signal.SIGINT), 0, process.log())
        process.expect("cancel", run_id=61)
        process.expect("completed", run_id=61, result="ok")
        complete = node.completes.get(timeout=WAIT)
        self.assertEqual(complete.failure.kind, "cancelled")

    def test_complete_token_replay(self):
        node = self.node()
        token = b"tok-killed".hex()
        for code, expected in ((grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"), (None, "ok")):
            node.complete_code = code
            process = WorkerProcess(["--endpoint", node.endpoint, "complete-token", token, "--output", "late"],
                                    self.token_file)
            self.workers.append(process)
            replay = process.expect("replay")
            self.assertEqual(replay["result"], expected)
            self.assertEqual(process.process.wait(WAIT), 0)
        request = node.completes.get(timeout=WAIT)
        self.assertEqual((request.task_token, request.success.output), (b"tok-killed", "late"))

    def test_complete_token_options_after_the_command(self):
        node = self.node()
        dead = dead_endpoint()
        process = WorkerProcess(["complete-token", "--endpoint", dead, "--endpoint", node.endpoint, "abcd"],
                                self.token_file)
        self.workers.append(process)
        self.assertEqual(process.expect("replay")["result"], "ok")
        self.assertEqual(node.completes.get(timeout=WAIT).task_token, bytes.fromhex("abcd"))


class ArgumentsTest(unittest.TestCase):
    def test_endpoints(self):
        self.assertEqual(worker.parse_endpoints(["a:1,http://b:2", "a:1", " c:3 "]), ["a:1", "http://b:2", "c:3"])

    def test_run_is_the_default_command(self):
        args = worker.parse_args(["--endpoint", "a:1", "--type", "t"])
        self.assertEqual((args.command, args.endpoints, args.capacity, args.poll_wait), ("run", ["a:1"], 4, 30.0))
        self.assertTrue(args.name.startswith("python@"))
        args = worker.parse_args(["--endpoint", "a:1", "run", "--type", "t", "--capacity", "8"])
        self.assertEqual((args.command, args.type, args.capacity), ("run", "t", 8))

    def test_payload(self):
        never = threading.Event()
        task = make_task(1, {"sleep_ms": 0, "output": "x"})
        self.assertEqual(worker.execute(task, never), worker.Outcome(True, output="x"))
        task = make_task(1, [1])
        self.assertEqual(worker.execute(task, never).kind, "bad_payload")
        cancelled = threading.Event()
        cancelled.set()
        outcome = worker.execute(make_task(1, {"sleep_ms": 5000}), cancelled)
        self.assertEqual((outcome.success, outcome.kind, outcome.message), (False, "cancelled", "cancelled"))


if __name__ == "__main__":
    unittest.main()

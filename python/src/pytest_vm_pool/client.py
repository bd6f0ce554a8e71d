"""A client for ``vm-pool protocol``: JSON lines over the helper's stdin/stdout (docs/protocol.md)."""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional

from .errors import HelperUnavailableError, VmPoolError

#: The protocol version this client speaks.
PROTOCOL_VERSION = 1
#: The helper must answer ``hello`` within this (Node start, provider probe). Scaled by VM_POOL_TIMEOUT_SCALE.
HELLO_TIMEOUT_S = 60.0
#: After closing its stdin, the helper gets this long to delete what is left and exit. Scaled.
HELPER_EXIT_TIMEOUT_S = 120.0
#: Lines of the helper's stderr kept to explain a helper that died.
STDERR_TAIL_LINES = 20

EventHandler = Callable[[str, str], None]


def timeout_scale(env: Mapping[str, str]) -> float:
    try:
        scale = float(env.get("VM_POOL_TIMEOUT_SCALE") or 1)
    except ValueError:
        return 1.0
    return scale if scale > 0 else 1.0


class _Waiter:
    __slots__ = ("done", "answer", "on_event")

    def __init__(self, on_event: Optional[EventHandler]) -> None:
        self.done = threading.Event()
        self.answer: Optional[Dict[str, Any]] = None
        self.on_event = on_event


class ProtocolClient:
    """One helper process for this (runner) process. Thread-safe: requests may come from several threads.

    The helper is started in its own session (a Ctrl-C in the terminal reaches pytest, which then drains;
    the helper is not killed half-way) and watches this process: if it dies, the helper deletes its VMs.
    """

    def __init__(self, command: List[str], *, env: Mapping[str, str], cwd: Path) -> None:
        self._env = dict(env)
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._waiters: Dict[int, _Waiter] = {}
        self._waiters_lock = threading.Lock()
        self._stderr: Deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._closed = False
        argv = [*command, "protocol", "--parent-pid", str(os.getpid())]
        self.command = argv
        try:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(cwd),
                env=self._env,
                start_new_session=True,
            )
        except OSError as error:
            raise HelperUnavailableError(
                f"could not start the vm-pool helper {' '.join(command)!r}: {error.strerror or error}",
                hint="check --vm-pool-helper / VM_POOL_HELPER, or npm install --save-dev vm-pool",
            ) from None
        self._reader = threading.Thread(target=self._read_stdout, name="vm-pool-helper-stdout", daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="vm-pool-helper-stderr", daemon=True)
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def hello(self, pool: Dict[str, Any], *, check: bool, client: str) -> Dict[str, Any]:
        timeout = HELLO_TIMEOUT_S * timeout_scale(self._env)
        return self.request("hello", {"protocol": PROTOCOL_VERSION, "client": client, "pid": os.getpid(), "pool": pool, "check": check}, timeout=timeout)

    def request(self, op: str, params: Optional[Dict[str, Any]] = None, *, on_event: Optional[EventHandler] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Send one request; block until its answer. ``ok: false`` raises the helper's VmPoolError."""
        request_id = next(self._ids)
        waiter = _Waiter(on_event)
        with self._waiters_lock:
            if self._closed:
                raise self._died_error()
            self._waiters[request_id] = waiter
        line = json.dumps({"id": request_id, "op": op, **(params or {})}, separators=(",", ":")) + "\n"
        try:
            with self._write_lock:
                assert self._process.stdin is not None
                self._process.stdin.write(line.encode("utf-8"))
                self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            with self._waiters_lock:
                self._waiters.pop(request_id, None)
            raise self._died_error() from None
        try:
            if not waiter.done.wait(timeout):
                raise HelperUnavailableError(f"the vm-pool helper did not answer {op} within {timeout:.0f} s", hint="set VM_POOL_TIMEOUT_SCALE=2 (or higher) on slow machines; DEBUG=vm-pool* shows what it does")
        except KeyboardInterrupt:
            # Stop the command in the VM too, not only the wait here.
            self._send_quietly({"id": f"cancel-{request_id}", "op": "cancel", "target": request_id})
            raise
        answer = waiter.answer
        if answer is None:
            raise self._died_error()
        if answer.get("ok") is True:
            result = answer.get("result")
            return result if isinstance(result, dict) else {}
        raise VmPoolError.from_json(answer.get("error") or {})

    def close(self) -> Optional[int]:
        """Close stdin (the helper deletes what was not drained, then exits) and wait for it."""
        try:
            with self._write_lock:
                if self._process.stdin and not self._process.stdin.closed:
                    self._process.stdin.close()
        except OSError:
            pass
        try:
            return self._process.wait(HELPER_EXIT_TIMEOUT_S * timeout_scale(self._env))
        except subprocess.TimeoutExpired:
            # Its pool reaper still deletes what it held once it is gone.
            self._process.kill()
            return self._process.wait()

    def stderr_tail(self) -> str:
        return " | ".join(line for line in self._stderr if line.strip())

    def _settle(self) -> None:
        """A moment for a helper that is going to exit and for its last stderr lines, which explain why.

        Its stdout closing (or a broken pipe) races its stderr: without this, the message could say
        "exited with 3" without the line the helper printed about it.
        """
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            return
        self._stderr_reader.join(2)

    def _died_error(self) -> HelperUnavailableError:
        self._settle()
        code = self._process.poll()
        tail = self.stderr_tail()
        said = f": {tail}" if tail else ""
        status = f"exited with {code}" if code is not None else "closed its output"
        return HelperUnavailableError(f"the vm-pool helper {status}{said}", hint="run the helper by hand to see why: " + " ".join(self.command[:-2]) + " --help")

    def _send_quietly(self, message: Dict[str, Any]) -> None:
        try:
            with self._write_lock:
                assert self._process.stdin is not None
                self._process.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
                self._process.stdin.flush()
        except (OSError, ValueError):
            pass

    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            request_id = message.get("id")
            with self._waiters_lock:
                waiter = self._waiters.get(request_id) if isinstance(request_id, int) else None
            if waiter is None:
                continue
            event = message.get("event")
            if isinstance(event, str):
                if waiter.on_event is not None:
                    waiter.on_event(event, str(message.get("data", "")))
                continue
            with self._waiters_lock:
                self._waiters.pop(request_id, None)
            waiter.answer = message
            waiter.done.set()
        # The helper is gone (or going): nobody will answer the rest. A moment for its exit code and last words, for the message.
        self._settle()
        with self._waiters_lock:
            self._closed = True
            waiters = list(self._waiters.values())
            self._waiters.clear()
        for waiter in waiters:
            waiter.done.set()

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        forward = "vm-pool" in self._env.get("DEBUG", "")
        for raw in self._process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stderr.append(line)
            if forward or line.startswith("[vm-pool] warning"):
                stream = sys.__stderr__
                if stream is not None:
                    stream.write(f"{line}\n")
                    stream.flush()

"""What a test holds: a ``Vm`` (``worker_vm``, ``fresh_vm``), its ``ExecResult`` and ``PortForward``."""

from __future__ import annotations

import base64
import os
import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:
    from .client import ProtocolClient

Command = Union[str, Sequence[str]]
OutputHandler = Callable[[str], None]


@dataclass(frozen=True)
class ExecResult:
    """The result of ``Vm.exec``. A non-zero exit is a result, not an exception (see ``check()``)."""

    exit_code: int
    stdout: str
    stderr: str
    #: Seconds, as measured by the helper.
    duration: float
    #: True when ``timeout`` ran out and the command was killed (``exit_code`` is then 124).
    timed_out: bool
    #: Set when the command was ended by a signal, e.g. ``'SIGKILL'``.
    signal: Optional[str] = None
    #: What ran (as given to ``Vm.exec``) and where: ``check()`` names them when it fails.
    command: Optional[Command] = None
    vm: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> "ExecResult":
        """Return self when the command succeeded, else raise ``ExecFailed`` with its output."""
        # pytest's traceback then ends at the test's `.check()` line, not in the plugin.
        __tracebackhide__ = True
        if not self.ok:
            raise ExecFailed(self)
        return self


class ExecFailed(AssertionError):
    """``ExecResult.check()`` on a failed command: an AssertionError, so pytest reports it as a test failure."""

    def __init__(self, result: ExecResult) -> None:
        self.result = result
        why = "timed out" if result.timed_out else f"exited with {result.exit_code}"
        if result.signal:
            why += f" ({result.signal})"
        what = f"command {_one_line(result.command)}" if result.command is not None else "command"
        where = f" in {result.vm}" if result.vm else ""
        super().__init__(f"{what}{where} {why}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}")


#: ``ExecFailed``'s first line is what pytest's short summary shows: a long script is cut there.
COMMAND_SHOWN_CHARS = 120


def _one_line(command: Command) -> str:
    text = command if isinstance(command, str) else shlex.join(command)
    lines = text.strip().splitlines() or [""]
    shown = lines[0]
    if len(lines) > 1 or len(shown) > COMMAND_SHOWN_CHARS:
        shown = shown[:COMMAND_SHOWN_CHARS] + "..."
    return f"`{shown}`"


class PortForward:
    """A TCP port on ``host`` (127.0.0.1) that reaches ``guest_port`` in the VM. Closed with its VM at the latest."""

    def __init__(self, client: "ProtocolClient", forward_id: str, host: str, port: int, guest_port: int) -> None:
        self._client = client
        self._id = forward_id
        self.host = host
        self.port = port
        self.guest_port = guest_port
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.request("closePort", {"forward": self._id})

    def __enter__(self) -> "PortForward":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PortForward({self.address} -> guest {self.guest_port})"


class Vm:
    """A VM leased from the pool through the helper. ``name`` is what ``vm-pool ls`` shows."""

    def __init__(self, client: "ProtocolClient", name: str, *, provider: str, adopted: bool = False, on_use: Optional[Callable[[], None]] = None) -> None:
        self._client = client
        self.name = name
        self.provider = provider
        #: True when this VM was an idle warm VM (left by an earlier run, of pytest or Vitest) and adopted.
        self.adopted = adopted
        self._on_use = on_use

    def exec(
        self,
        command: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        input: Union[str, bytes, None] = None,
        timeout: Optional[float] = None,
        stream: bool = False,
        on_stdout: Optional[OutputHandler] = None,
        on_stderr: Optional[OutputHandler] = None,
        cancellable: bool = False,
    ) -> ExecResult:
        """Run ``command`` in the VM: a string is a shell line, a list is argv (quoted safely).

        ``timeout`` is in seconds: the command is killed then and the result has ``timed_out``. ``stream=True``
        writes the output to this process's stdout/stderr as it comes (pytest captures it per test; ``-s`` shows
        it live); ``on_stdout`` / ``on_stderr`` get the chunks instead (called from the client's reader thread).
        ``cancellable=True`` (implied by ``timeout``): Ctrl-C kills the command in the VM too; it costs a few
        process starts per exec in the guest, so it is off by default (the VM's deletion ends a command anyway).
        """
        self._used()
        params: Dict[str, Any] = {"vm": self.name, "command": command if isinstance(command, str) else list(command)}
        if cwd is not None:
            params["cwd"] = cwd
        if env is not None:
            params["env"] = dict(env)
        if isinstance(input, bytes):
            params["inputBase64"] = base64.b64encode(input).decode("ascii")
        elif input is not None:
            params["input"] = input
        if timeout is not None:
            params["timeoutMs"] = max(1, int(timeout * 1000))
        if cancellable:
            params["cancellable"] = True
        handlers = {"stdout": on_stdout or (_writer(sys.stdout) if stream else None), "stderr": on_stderr or (_writer(sys.stderr) if stream else None)}
        on_event = None
        if handlers["stdout"] or handlers["stderr"]:
            params["stream"] = True

            def on_event(event: str, data: str) -> None:
                handler = handlers.get(event)
                if handler is not None:
                    handler(data)

        result = self._client.request("exec", params, on_event=on_event)
        return ExecResult(
            exit_code=int(result.get("exitCode", -1)),
            stdout=str(result.get("stdout", "")),
            stderr=str(result.get("stderr", "")),
            duration=float(result.get("durationMs", 0)) / 1000.0,
            timed_out=bool(result.get("timedOut", False)),
            signal=result.get("signal"),
            command=command if isinstance(command, str) else list(command),
            vm=self.name,
        )

    def put_file(self, path: str, data: Union[bytes, str, None] = None, *, local_path: Union[str, "os.PathLike[str]", None] = None) -> None:
        """Write ``data`` (bytes, or text as UTF-8) to ``path`` in the VM, or the file at ``local_path`` (read by the helper: no copy through the pipe)."""
        self._used()
        if (data is None) == (local_path is None):
            raise TypeError("put_file takes data or local_path, not both or neither")
        if local_path is not None:
            self._client.request("putFile", {"vm": self.name, "path": path, "localPath": os.path.abspath(os.fspath(local_path))})
            return
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self._client.request("putFile", {"vm": self.name, "path": path, "data": base64.b64encode(raw).decode("ascii")})

    def get_file(self, path: str, *, local_path: Union[str, "os.PathLike[str]", None] = None) -> bytes:
        """The bytes of ``path`` in the VM; with ``local_path`` the helper writes them there too (and they are read back from it)."""
        if local_path is not None:
            target = os.path.abspath(os.fspath(local_path))
            self._client.request("getFile", {"vm": self.name, "path": path, "localPath": target})
            with open(target, "rb") as handle:
                return handle.read()
        answer = self._client.request("getFile", {"vm": self.name, "path": path})
        return base64.b64decode(answer.get("data", ""))

    def forward_port(self, guest_port: int, host_port: Optional[int] = None) -> PortForward:
        """A port on 127.0.0.1 that reaches ``guest_port`` in the VM (``host_port`` or a free one)."""
        params: Dict[str, Any] = {"vm": self.name, "guestPort": guest_port}
        if host_port is not None:
            params["hostPort"] = host_port
        answer = self._client.request("forwardPort", params)
        return PortForward(self._client, str(answer["forward"]), str(answer["host"]), int(answer["port"]), guest_port)

    def _used(self) -> None:
        if self._on_use is not None:
            self._on_use()

    def __repr__(self) -> str:
        return f"Vm({self.name!r}, provider={self.provider!r})"


def _writer(stream: Any) -> OutputHandler:
    def write(chunk: str) -> None:
        stream.write(chunk)
        stream.flush()

    return write

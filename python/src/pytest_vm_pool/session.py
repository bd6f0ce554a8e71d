"""One runner process's side of the pool: settings, the helper, the worker VM, fresh VMs, the drain."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from ._version import __version__
from .client import ProtocolClient
from .errors import VmPoolError
from .helper import check_node, find_helper_command
from .vm import Vm

#: ``--vm-pool-keep-warm`` without a value: the same 30 minutes as Vitest's ``keepWarm: true``.
DEFAULT_KEEP_WARM_TTL = "30m"
#: At most this many idle VMs per provider on the host, as Vitest's ``keepWarm: true``.
KEEP_WARM_MAX = 4
#: The lease key of the worker VM in this process's pool.
WORKER_KEY = "worker"
#: ``fresh_vm`` names: ``pytest-fresh-<runId>-<n>``.
FRESH_PREFIX = "pytest-fresh"
#: ``--vm-pool-reset`` value that restores the provider's snapshot instead of running a shell line.
RESET_TO_SNAPSHOT = "snapshot"


def parse_duration_ms(text: str, what: str) -> int:
    """``90s``, ``30m``, ``2h`` or a number of seconds → milliseconds."""
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|h)?\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{what} must be a duration like 90s, 30m or 2h, got {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"] * 1000


def worker_vm_name(pid: int, unix_time: float) -> str:
    """``pytest-worker-<pid>-<unix time>``: what ``vm-pool gc`` judges by that pid and time."""
    return f"pytest-worker-{pid}-{int(unix_time)}"


@dataclass(frozen=True)
class Settings:
    """What the options, ini values and environment resolved to (see the README)."""

    provider: Optional[str] = None
    provider_options: Optional[Dict[str, Any]] = None
    image: Optional[str] = None
    keep_warm_ms: Optional[int] = None
    reset: Optional[str] = None
    helper: Optional[str] = None
    rootdir: Path = field(default_factory=Path.cwd)

    def pool(self) -> Dict[str, Any]:
        """``hello.pool``: unset fields are left to the helper's defaults (VM_POOL_PROVIDER, ...)."""
        pool: Dict[str, Any] = {"freshPrefix": FRESH_PREFIX}
        if self.provider:
            pool["provider"] = self.provider
        if self.provider_options is not None:
            pool["providerOptions"] = self.provider_options
        if self.image:
            pool["spec"] = {"image": self.image}
        if self.keep_warm_ms is not None:
            keep: Dict[str, Any] = {"ttlMs": self.keep_warm_ms, "max": KEEP_WARM_MAX}
            if self.reset:
                keep["reset"] = self.reset
            pool["keepWarm"] = keep
        return pool


def parse_provider_options(text: str, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        # Never quote it: provider options hold tokens and keys.
        raise ValueError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


class VmPoolSession:
    """The pool as this process uses it: one helper (started on first use), one worker VM, fresh VMs.

    A failure to start is remembered: later requests raise the same error instead of retrying a broken setup.
    """

    def __init__(self, settings: Settings, env: Optional[Mapping[str, str]] = None) -> None:
        self.settings = settings
        self._env = dict(os.environ if env is None else env)
        self._lock = threading.RLock()
        self._client: Optional[ProtocolClient] = None
        self._hello: Dict[str, Any] = {}
        self._failure: Optional[VmPoolError] = None
        self._worker: Optional[Vm] = None
        self._worker_dirty = False
        self._drained: Optional[Dict[str, Any]] = None

    @property
    def started(self) -> bool:
        return self._client is not None

    @property
    def helper_pid(self) -> Optional[int]:
        """The pid of this process's ``vm-pool protocol`` helper, once started."""
        return self._client.pid if self._client is not None else None

    @property
    def failure(self) -> Optional[VmPoolError]:
        return self._failure

    def start(self, *, check: bool = False) -> Dict[str, Any]:
        """Start the helper and say hello (``check``: probe the provider and image now). Returns the hello answer."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._client is not None:
                return self._hello
            client: Optional[ProtocolClient] = None
            try:
                command = find_helper_command(self.settings.helper, self._env, self.settings.rootdir)
                check_node(command, self._env)
                client = ProtocolClient(command, env=self._env, cwd=self.settings.rootdir)
                self._hello = client.hello(self.settings.pool(), check=check, client=f"pytest-vm-pool {__version__}")
            except VmPoolError as error:
                if client is not None:
                    client.close()
                self._failure = error
                raise
            self._client = client
            return self._hello

    def worker_vm(self) -> Vm:
        """This process's worker VM, leased on first use and named ``pytest-worker-<pid>-<unix time>``."""
        with self._lock:
            if self._worker is None:
                self.start()
                answer = self._request("acquire", {"key": WORKER_KEY, "name": worker_vm_name(os.getpid(), time.time())})
                self._worker = Vm(self._client_or_fail(), answer["vm"], provider=str(self._hello.get("provider")), adopted=bool(answer.get("adopted")), on_use=self._mark_dirty)
            return self._worker

    def reset_worker_vm(self, *, only_if_used: bool = True) -> None:
        """Bring the worker VM back to clean: ``--vm-pool-reset`` (a shell line, or ``snapshot``). Skipped when untouched since the last reset."""
        vm = self.worker_vm()
        reset = self.settings.reset
        if reset is None:
            raise VmPoolError("VMPOOL_INVALID_OPTIONS", "clean_worker_vm needs a reset", hint="set --vm-pool-reset 'rm -rf /tmp/work' (a shell line) or --vm-pool-reset snapshot, or ini vm_pool_reset")
        if only_if_used and not self._worker_dirty:
            return
        if reset == RESET_TO_SNAPSHOT:
            self._request("reset", {"vm": vm.name})
        else:
            result = self._request("exec", {"vm": vm.name, "command": reset})
            if result.get("exitCode") != 0:
                raise VmPoolError("VMPOOL_EXEC_FAILED", f"the reset command exited with {result.get('exitCode')}: {str(result.get('stderr', '')).strip()[:200]}", vm=vm.name, hint="fix --vm-pool-reset / ini vm_pool_reset")
        self._worker_dirty = False

    @contextlib.contextmanager
    def fresh(self, **spec: Any) -> Iterator[Vm]:
        """A throwaway VM, deleted when the block ends, also when it raised. ``spec``: image, cpus, memoryMiB, diskGiB, labels."""
        self.start()
        answer = self._request("fresh", {"spec": spec} if spec else {})
        vm = Vm(self._client_or_fail(), answer["vm"], provider=str(self._hello.get("provider")))
        try:
            yield vm
        finally:
            self._request("release", {"vm": vm.name})

    def drain(self) -> Optional[Dict[str, Any]]:
        """Hand everything back (warm with --vm-pool-keep-warm, else deleted) and stop the helper. Returns the pool's counts."""
        with self._lock:
            if self._drained is not None or self._client is None:
                return self._drained
            client = self._client
            try:
                answer = client.request("drain", {})
                self._drained = dict(answer.get("stats") or {})
            except VmPoolError as error:
                details = error.details.get("stats")
                self._drained = dict(details) if isinstance(details, dict) else {}
                raise
            finally:
                client.close()
            return self._drained

    def close(self) -> None:
        """Without a drain: the helper deletes what this process held (its state is unknown)."""
        with self._lock:
            if self._client is not None and self._drained is None:
                self._client.close()

    def _mark_dirty(self) -> None:
        self._worker_dirty = True

    def _client_or_fail(self) -> ProtocolClient:
        if self._client is None:
            raise VmPoolError("VMPOOL_INTERNAL", "the vm-pool helper is not started")
        return self._client

    def _request(self, op: str, params: Dict[str, Any]) -> Dict[str, Any]:
        return self._client_or_fail().request(op, params)

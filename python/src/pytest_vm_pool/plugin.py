"""The pytest plugin (entry point ``pytest11: vm_pool``): options, fixtures, the end-of-run line.

Each pytest process that uses a VM fixture (every xdist worker, or the one process without xdist) starts
one ``vm-pool protocol`` helper, which holds one pool for it: its worker VM, its fresh VMs. See README.md.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, NoReturn

import pytest

from .errors import VmPoolError
from .session import DEFAULT_KEEP_WARM_TTL, Settings, VmPoolSession, parse_duration_ms, parse_provider_options
from .vm import Vm

SESSION_KEY = pytest.StashKey[VmPoolSession]()
STATS_KEY = pytest.StashKey[List[Dict[str, Any]]]()
#: Tests that use one of these get VMs; a run without them never starts the helper.
VM_FIXTURES = frozenset({"vm_pool", "worker_vm", "fresh_vm", "clean_worker_vm"})
COUNTS = ("created", "reused", "deleted", "leaked")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vm-pool", "pooled VMs (pytest-vm-pool)")
    group.addoption("--vm-pool-provider", metavar="NAME", help="provider: qemu, fake, multipass, ... (default: VM_POOL_PROVIDER, ini vm_pool_provider, qemu)")
    group.addoption("--vm-pool-image", metavar="IMAGE", help="image the VMs boot (default: ini vm_pool_image, the provider's default)")
    group.addoption(
        "--vm-pool-keep-warm",
        metavar="TTL",
        nargs="?",
        const=DEFAULT_KEEP_WARM_TTL,
        help=f"hand the worker VMs back warm for the next run (pytest or Vitest) to adopt, for TTL (90s, 30m, 2h; default {DEFAULT_KEEP_WARM_TTL})",
    )
    group.addoption("--vm-pool-reset", metavar="LINE", help="how clean_worker_vm (and a warm hand-back) cleans the worker VM: a shell line, or 'snapshot'")
    group.addoption("--vm-pool-helper", metavar="COMMAND", help="the vm-pool command (default: VM_POOL_HELPER, ini vm_pool_helper, vm-pool on PATH, node_modules/.bin/vm-pool, npx --no vm-pool)")
    parser.addini("vm_pool_provider", "provider (--vm-pool-provider)", default=None)
    parser.addini("vm_pool_provider_options", "provider options as a JSON object (VM_POOL_PROVIDER_OPTIONS wins)", default=None)
    parser.addini("vm_pool_image", "image the VMs boot (--vm-pool-image)", default=None)
    parser.addini("vm_pool_keep_warm", "false, true or a TTL like 30m (--vm-pool-keep-warm)", default=None)
    parser.addini("vm_pool_reset", "shell line or 'snapshot' (--vm-pool-reset)", default=None)
    parser.addini("vm_pool_helper", "the vm-pool command (--vm-pool-helper)", default=None)


def resolve_settings(config: pytest.Config, env: Dict[str, str]) -> Settings:
    """Command line, then the environment (as for the vm-pool CLI), then the ini file, then defaults."""

    def pick(option: str, ini: str, env_name: str = "") -> Any:
        value = config.getoption(option)
        if value is None and env_name:
            value = env.get(env_name) or None
        if value is None:
            value = config.getini(ini) or None
        return value

    keep_warm = pick("vm_pool_keep_warm", "vm_pool_keep_warm")
    keep_warm_ms = None
    try:
        if keep_warm is not None and str(keep_warm).strip().lower() not in ("false", "no", "0", "off"):
            is_on = str(keep_warm).strip().lower() in ("true", "yes", "on")
            keep_warm_ms = parse_duration_ms(DEFAULT_KEEP_WARM_TTL if is_on else str(keep_warm), "--vm-pool-keep-warm")
        provider_options = None
        ini_options = config.getini("vm_pool_provider_options")
        # VM_POOL_PROVIDER_OPTIONS is read by the helper itself, like the CLI does.
        if ini_options and not env.get("VM_POOL_PROVIDER_OPTIONS"):
            provider_options = parse_provider_options(ini_options, "ini vm_pool_provider_options")
    except ValueError as error:
        raise pytest.UsageError(f"vm-pool: {error}") from None
    return Settings(
        provider=pick("vm_pool_provider", "vm_pool_provider", "VM_POOL_PROVIDER"),
        provider_options=provider_options,
        image=pick("vm_pool_image", "vm_pool_image"),
        keep_warm_ms=keep_warm_ms,
        reset=pick("vm_pool_reset", "vm_pool_reset"),
        helper=pick("vm_pool_helper", "vm_pool_helper", "VM_POOL_HELPER"),
        rootdir=config.rootpath,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SESSION_KEY] = VmPoolSession(resolve_settings(config, dict(os.environ)))
    config.stash[STATS_KEY] = []


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not _is_xdist_worker(config) and getattr(config.option, "dist", "no") != "no"


def _preflight(config: pytest.Config, *, keep: bool) -> None:
    """Start a helper and probe the provider and image once, before any test: a bad setup is ONE error line."""
    vm_pool = config.stash[SESSION_KEY]
    try:
        if keep:
            vm_pool.start(check=True)
        else:
            probe = VmPoolSession(vm_pool.settings)
            probe.start(check=True)
            probe.drain()
    except VmPoolError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # The xdist controller runs no tests and cannot see their fixtures: it checks the setup once for all workers.
    if _is_xdist_controller(session.config):
        _preflight(session.config, keep=False)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: List[pytest.Item]) -> None:
    # trylast: after -k / -m deselection, so only the tests that will run count.
    if _is_xdist_worker(config) or _is_xdist_controller(config):
        return
    if any(VM_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in items):
        _preflight(config, keep=True)


@contextlib.contextmanager
def _readable_errors() -> Iterator[None]:
    """A VmPoolError becomes one line in the report (its message and hint), not a traceback through the plugin."""
    try:
        yield
    except VmPoolError as error:
        _fail(error)


def _fail(error: VmPoolError) -> NoReturn:
    # `from None`: raised inside the `except`, the Failed would carry the VmPoolError as its context, and pytest
    # prints the chain ("During handling of the above exception...") with the same line twice.
    raise pytest.fail.Exception(str(error), pytrace=False) from None


@pytest.fixture(scope="session")
def vm_pool(pytestconfig: pytest.Config) -> VmPoolSession:
    """This process's side of the pool: ``vm_pool.fresh(cpus=2)`` as a context manager, ``worker_vm()``, settings."""
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def worker_vm(vm_pool: VmPoolSession) -> Vm:
    """One VM per xdist worker (or per run without xdist), named ``pytest-worker-<pid>-<unix time>``, shared by its tests."""
    try:
        return vm_pool.worker_vm()
    except VmPoolError as error:
        _fail(error)


@pytest.fixture
def fresh_vm(vm_pool: VmPoolSession) -> Iterator[Vm]:
    """A throwaway VM for this test only: deleted when the test ends, also when it failed."""
    with _readable_errors():
        context = vm_pool.fresh()
        vm = context.__enter__()
    try:
        yield vm
    finally:
        with _readable_errors():
            context.__exit__(None, None, None)


@pytest.fixture
def clean_worker_vm(vm_pool: VmPoolSession, worker_vm: Vm) -> Vm:
    """The worker VM, reset before this test if an earlier test used it (``--vm-pool-reset``)."""
    with _readable_errors():
        vm_pool.reset_worker_vm()
    return worker_vm


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    vm_pool = config.stash.get(SESSION_KEY, None)
    if vm_pool is None or not vm_pool.started:
        return
    try:
        stats = vm_pool.drain()
    except VmPoolError as error:
        stats = error.details.get("stats") if isinstance(error.details.get("stats"), dict) else None
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(str(error), red=True)
    if not stats:
        return
    if _is_xdist_worker(config):
        config.workeroutput["vm_pool"] = stats  # type: ignore[attr-defined]
    else:
        config.stash[STATS_KEY].append(stats)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    stats = getattr(node, "workeroutput", {}).get("vm_pool")
    if isinstance(stats, dict):
        node.config.stash[STATS_KEY].append(stats)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    all_stats = config.stash.get(STATS_KEY, [])
    if not all_stats:
        return
    totals = {name: sum(int(stats.get(name, 0)) for stats in all_stats) for name in (*COUNTS, "warmed")}
    line = "vm-pool: " + ", ".join(f"{totals[name]} {name}" for name in COUNTS)
    if totals["warmed"]:
        line += f", {totals['warmed']} kept warm"
    terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Not drained (an error before sessionfinish): closing stdin makes the helper delete what this process held.
    vm_pool = config.stash.get(SESSION_KEY, None)
    if vm_pool is not None:
        vm_pool.close()

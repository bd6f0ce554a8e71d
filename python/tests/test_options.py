"""Options, ini values and environment variables, through pytest itself (pytester)."""

import pytest

from pytest_vm_pool.plugin import SESSION_KEY
from pytest_vm_pool.session import parse_duration_ms, worker_vm_name

pytest_plugins = ["pytester"]


def test_worker_vm_name():
    assert worker_vm_name(4242, 1760000000.9) == "pytest-worker-4242-1760000000"


@pytest.mark.parametrize("text, ms", [("90s", 90_000), ("30m", 1_800_000), ("2h", 7_200_000), ("45", 45_000)])
def test_durations(text, ms):
    assert parse_duration_ms(text, "x") == ms


def settings_of(pytester, *args):
    config = pytester.parseconfigure(*args)
    return config.stash[SESSION_KEY].settings


def test_command_line_then_environment_then_ini(pytester, monkeypatch):
    pytester.makeini(
        """
        [pytest]
        vm_pool_provider = multipass
        vm_pool_image = debian-12
        vm_pool_keep_warm = 10m
        vm_pool_reset = snapshot
        vm_pool_provider_options = {"stateDir": "/tmp/from-ini"}
        """
    )
    monkeypatch.delenv("VM_POOL_PROVIDER", raising=False)
    monkeypatch.delenv("VM_POOL_PROVIDER_OPTIONS", raising=False)
    settings = settings_of(pytester)
    assert (settings.provider, settings.image, settings.keep_warm_ms, settings.reset) == ("multipass", "debian-12", 600_000, "snapshot")
    assert settings.pool() == {
        "freshPrefix": "pytest-fresh",
        "provider": "multipass",
        "providerOptions": {"stateDir": "/tmp/from-ini"},
        "spec": {"image": "debian-12"},
        "keepWarm": {"ttlMs": 600_000, "max": 4, "reset": "snapshot"},
    }
    monkeypatch.setenv("VM_POOL_PROVIDER", "fake")
    monkeypatch.setenv("VM_POOL_PROVIDER_OPTIONS", '{"stateDir": "/tmp/from-env"}')
    settings = settings_of(pytester)
    # The helper reads VM_POOL_PROVIDER_OPTIONS itself, like the CLI: the ini value is not sent.
    assert (settings.provider, settings.provider_options) == ("fake", None)
    settings = settings_of(pytester, "--vm-pool-provider", "qemu", "--vm-pool-keep-warm", "--vm-pool-image", "minimal")
    assert (settings.provider, settings.keep_warm_ms, settings.image) == ("qemu", 1_800_000, "minimal")


def test_keep_warm_off_and_defaults(pytester, monkeypatch):
    monkeypatch.delenv("VM_POOL_PROVIDER", raising=False)
    pytester.makeini("[pytest]\nvm_pool_keep_warm = false\n")
    settings = settings_of(pytester)
    assert (settings.provider, settings.keep_warm_ms, settings.image, settings.reset) == (None, None, None, None)
    assert settings.pool() == {"freshPrefix": "pytest-fresh"}


def test_bad_values_are_one_usage_error_line(pytester, monkeypatch):
    monkeypatch.delenv("VM_POOL_PROVIDER_OPTIONS", raising=False)
    result = pytester.runpytest("--vm-pool-keep-warm=banana")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: vm-pool: --vm-pool-keep-warm must be a duration like 90s, 30m or 2h, got 'banana'"])
    pytester.makeini("[pytest]\nvm_pool_provider_options = {not json\n")
    result = pytester.runpytest()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: vm-pool: ini vm_pool_provider_options is not valid JSON"])

"""ExecResult.check(): what ExecFailed says (its first line is pytest's short summary)."""

import pytest

from pytest_vm_pool.vm import COMMAND_SHOWN_CHARS, ExecFailed, ExecResult


def result(**fields):
    return ExecResult(**{"exit_code": 2, "stdout": "out\n", "stderr": "err\n", "duration": 0.1, "timed_out": False, **fields})


def test_the_first_line_names_the_command_and_the_vm():
    with pytest.raises(ExecFailed) as raised:
        result(command=["grep", "-q", "port=8080", "/etc/app conf"], vm="pytest-worker-1-2").check()
    assert str(raised.value).splitlines() == ["command `grep -q port=8080 '/etc/app conf'` in pytest-worker-1-2 exited with 2", "--- stdout", "out", "--- stderr", "err"]


def test_a_script_is_cut_to_its_first_line():
    script = "set -e\n" + "x" * 300
    with pytest.raises(ExecFailed) as raised:
        result(command=script, vm="v", timed_out=True, exit_code=124).check()
    assert str(raised.value).splitlines()[0] == "command `set -e...` in v timed out"
    with pytest.raises(ExecFailed) as raised:
        result(command="y" * 300).check()
    assert str(raised.value).splitlines()[0] == f"command `{'y' * COMMAND_SHOWN_CHARS}...` exited with 2"


def test_without_a_command_it_still_says_why():
    with pytest.raises(ExecFailed, match=r"^command exited with 2\n"):
        result().check()
    assert result(exit_code=0).check().exit_code == 0

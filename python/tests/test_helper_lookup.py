"""Finding the helper and checking its Node.js: pure functions over PATH and the file system."""

import os
import stat
from pathlib import Path

import pytest

from pytest_vm_pool.errors import HelperUnavailableError, VmPoolError
from pytest_vm_pool.helper import check_node, find_helper_command, find_node, parse_node_version


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize(
    "text, version",
    [("22.12.0", (22, 12, 0)), ("v24.1.3\n", (24, 1, 3)), ("20.0.0-pre", (20, 0, 0)), ("", None), ("node", None)],
)
def test_parse_node_version(text, version):
    assert parse_node_version(text) == version


def test_a_configured_helper_is_split_like_a_shell_line(tmp_path):
    assert find_helper_command("'/opt/my node/node' /x/main.js", {"PATH": ""}, tmp_path) == ["/opt/my node/node", "/x/main.js"]


def test_lookup_order_path_then_node_modules_then_npx(tmp_path):
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    npx = executable(bin_dir / "npx")
    assert find_helper_command(None, {"PATH": str(bin_dir)}, project) == [str(npx), "--no", "vm-pool"]
    local = executable(tmp_path / "project" / "node_modules" / ".bin" / "vm-pool")
    assert find_helper_command(None, {"PATH": str(bin_dir)}, project) == [str(local)]
    on_path = executable(bin_dir / "vm-pool")
    assert find_helper_command(None, {"PATH": str(bin_dir)}, project) == [str(on_path)]


def test_nothing_found_says_what_is_missing(tmp_path):
    with pytest.raises(HelperUnavailableError, match="Node.js was not found on PATH"):
        find_helper_command(None, {"PATH": str(tmp_path)}, tmp_path)
    executable(tmp_path / "node")
    with pytest.raises(HelperUnavailableError, match="the vm-pool helper was not found") as caught:
        find_helper_command(None, {"PATH": str(tmp_path)}, tmp_path)
    assert "npm install --save-dev vm-pool" in str(caught.value)


def test_find_node_uses_the_commands_own_node(tmp_path):
    node = executable(tmp_path / "node22")
    assert find_node([str(node), "main.js"], {"PATH": ""}) == str(node)
    assert find_node(["node22", "main.js"], {"PATH": str(tmp_path)}) == str(node)
    other = executable(tmp_path / "node")
    assert find_node(["/usr/local/bin/vm-pool"], {"PATH": str(tmp_path)}) == str(other)


@pytest.mark.parametrize("version, ok", [("22.11.9", False), ("22.12.0", True), ("18.19.0", False), ("24.0.0", True)])
def test_check_node_wants_22_12(tmp_path, version, ok):
    executable(tmp_path / "node", f"#!/bin/sh\necho {version}\n")
    env = {"PATH": str(tmp_path)}
    if ok:
        assert check_node(["vm-pool"], env)[:2] >= (22, 12)
    else:
        with pytest.raises(HelperUnavailableError, match=rf"Node.js {version} \(.*\) is too old"):
            check_node(["vm-pool"], env)


def test_errors_are_one_line_with_the_hint():
    error = VmPoolError.from_json({"code": "VMPOOL_CREATE_FAILED", "message": "could not create x\n  caused by: y", "hint": "try z", "provider": "qemu"})
    assert str(error) == "vm-pool: [qemu] could not create x (hint: try z)"
    assert error.code == "VMPOOL_CREATE_FAILED"
    assert os.linesep not in str(error)

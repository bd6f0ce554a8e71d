"""Finding the ``vm-pool protocol`` helper and the Node.js that runs it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

from .errors import HelperUnavailableError

#: vm-pool (and its Vitest 5 peer) needs this Node.js or newer.
MIN_NODE_VERSION: Tuple[int, int] = (22, 12)
#: ``node -p process.versions.node`` must answer within this many seconds.
NODE_VERSION_TIMEOUT_S = 30

INSTALL_HINT = "install Node.js >= 22.12 (https://nodejs.org) and put it on PATH, or point --vm-pool-helper / VM_POOL_HELPER at a vm-pool run by a newer node"


def find_helper_command(configured: Optional[str], env: Mapping[str, str], start_dir: Path) -> List[str]:
    """The command that runs vm-pool's CLI, without the ``protocol`` argument.

    In order: ``configured`` (``--vm-pool-helper`` / ini ``vm_pool_helper`` / ``VM_POOL_HELPER``, split like a
    shell would), ``vm-pool`` on PATH, ``node_modules/.bin/vm-pool`` in ``start_dir`` or a parent, then
    ``npx --no vm-pool`` (which finds a project-local install and never downloads).
    """
    if configured:
        command = shlex.split(configured)
        if not command:
            raise HelperUnavailableError("the configured vm-pool helper is empty", hint="set --vm-pool-helper to a command, e.g. 'npx --no vm-pool'")
        return command
    path = env.get("PATH", os.defpath)
    found = shutil.which("vm-pool", path=path)
    if found:
        return [found]
    for directory in [start_dir, *start_dir.parents]:
        local = directory / "node_modules" / ".bin" / "vm-pool"
        if local.is_file() and os.access(local, os.X_OK):
            return [str(local)]
    npx = shutil.which("npx", path=path)
    if npx:
        return [npx, "--no", "vm-pool"]
    if not shutil.which("node", path=path):
        raise HelperUnavailableError("Node.js was not found on PATH, and the vm-pool helper needs it", hint=INSTALL_HINT)
    raise HelperUnavailableError(
        "the vm-pool helper was not found (no vm-pool on PATH, no node_modules/.bin/vm-pool, no npx)",
        hint="npm install --save-dev vm-pool in the project, or set --vm-pool-helper / VM_POOL_HELPER",
    )


def find_node(command: List[str], env: Mapping[str, str]) -> Optional[str]:
    """The node that will run the helper: the command's own when it starts with node, else node on PATH."""
    first = command[0]
    path = env.get("PATH", os.defpath)
    if re.match(r"^node(js)?(\d+(\.\d+)*)?(\.exe)?$", os.path.basename(first)):
        return first if os.sep in first else shutil.which(first, path=path)
    return shutil.which("node", path=path)


def parse_node_version(text: str) -> Optional[Tuple[int, int, int]]:
    """``'22.12.0'`` or ``'v22.12.0'`` → ``(22, 12, 0)``; anything else → None."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def check_node(command: List[str], env: Mapping[str, str]) -> Tuple[int, int, int]:
    """Fail with one clear line when the helper's Node.js is missing or older than 22.12."""
    node = find_node(command, env)
    if node is None:
        raise HelperUnavailableError("Node.js was not found on PATH, and the vm-pool helper needs it", hint=INSTALL_HINT)
    try:
        answer = subprocess.run([node, "-p", "process.versions.node"], capture_output=True, text=True, env=dict(env), timeout=NODE_VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise HelperUnavailableError(f"could not run {node}: {error}", hint=INSTALL_HINT) from None
    version = parse_node_version(answer.stdout)
    if version is None:
        raise HelperUnavailableError(f"{node} did not say its version (exit {answer.returncode})", hint=INSTALL_HINT)
    if version[:2] < MIN_NODE_VERSION:
        shown = ".".join(map(str, version))
        raise HelperUnavailableError(f"Node.js {shown} ({node}) is too old: the vm-pool helper needs >= {MIN_NODE_VERSION[0]}.{MIN_NODE_VERSION[1]}", hint=INSTALL_HINT)
    return version

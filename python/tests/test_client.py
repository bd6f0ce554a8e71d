"""The protocol client against helpers that die: what it says must include the helper's last words."""

import sys
import time

import pytest

from pytest_vm_pool.client import ProtocolClient
from pytest_vm_pool.errors import HelperUnavailableError

DIES = "import sys; sys.stderr.write('broken install\\n'); sys.stderr.flush(); sys.exit(3)"


@pytest.mark.parametrize("stderr_delay", [0.0, 0.5])
def test_a_helper_that_exits_at_once_is_explained_by_its_stderr(tmp_path, monkeypatch, stderr_delay):
    # The stdout reader sees the end before the stderr reader has read the last line when that thread is
    # slow to be scheduled; the delay makes the slow case certain.
    read_stderr = ProtocolClient._read_stderr

    def late(self):
        time.sleep(stderr_delay)
        read_stderr(self)

    monkeypatch.setattr(ProtocolClient, "_read_stderr", late)
    client = ProtocolClient([sys.executable, "-c", DIES], env={}, cwd=tmp_path)
    with pytest.raises(HelperUnavailableError) as raised:
        client.hello({}, check=False, client="test")
    assert "the vm-pool helper exited with 3: broken install" in str(raised.value)
    assert client.close() == 3

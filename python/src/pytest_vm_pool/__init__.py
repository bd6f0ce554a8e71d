"""pytest-vm-pool: pooled real VMs for pytest (``worker_vm``, ``fresh_vm``, ``clean_worker_vm``), served by vm-pool."""

from ._version import __version__
from .errors import HelperUnavailableError, VmPoolError
from .session import Settings, VmPoolSession
from .vm import ExecFailed, ExecResult, PortForward, Vm

__all__ = [
    "ExecFailed",
    "ExecResult",
    "HelperUnavailableError",
    "PortForward",
    "Settings",
    "Vm",
    "VmPoolError",
    "VmPoolSession",
    "__version__",
]

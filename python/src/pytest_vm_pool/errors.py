"""Errors: the helper's VmPoolError (same codes as the npm package), read from its JSON answers."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional


class VmPoolError(Exception):
    """A vm-pool error with a stable ``code`` (``VMPOOL_...``), what happened and what to try.

    ``str(error)`` is one line: ``vm-pool: <message> (hint: <hint>)``, so pytest shows it without a
    traceback wall when it is raised through ``pytest.fail(..., pytrace=False)`` or ``pytest.UsageError``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        hint: Optional[str] = None,
        vm: Optional[str] = None,
        operation: Optional[str] = None,
        provider: Optional[str] = None,
        details: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.code = code
        self.message = message
        self.hint = hint
        self.vm = vm
        self.operation = operation
        self.provider = provider
        self.details = details or {}
        super().__init__(self.one_line())

    def one_line(self) -> str:
        provider = f"[{self.provider}] " if self.provider else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        # The helper's messages may carry a cause on later lines: keep the first.
        first = self.message.strip().splitlines()[0] if self.message.strip() else self.code
        return f"vm-pool: {provider}{first}{hint}"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "VmPoolError":
        return cls(
            str(data.get("code", "VMPOOL_INTERNAL")),
            str(data.get("message", "unknown error")),
            hint=data.get("hint"),
            vm=data.get("vm"),
            operation=data.get("operation"),
            provider=data.get("provider"),
            details=data.get("details") if isinstance(data.get("details"), dict) else None,
        )


class HelperUnavailableError(VmPoolError):
    """The ``vm-pool protocol`` helper could not be found, started, or died (code ``VMPOOL_HELPER_UNAVAILABLE``)."""

    def __init__(self, message: str, *, hint: Optional[str] = None) -> None:
        super().__init__("VMPOOL_HELPER_UNAVAILABLE", message, hint=hint)

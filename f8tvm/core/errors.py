"""Errors that f8tvm reports to users (clear messages, no TVM stack traces)."""


class F8TVMError(Exception):
    """Base class for f8tvm's user-facing errors."""


class UnsupportedOpError(F8TVMError):
    """The model uses an operator that f8tvm cannot import or quantize."""


class InputError(F8TVMError, ValueError):
    """Wrong input shape, dtype or file."""


class ToolchainError(F8TVMError):
    """A tool the target needs (cross compiler, emulator) is not installed."""


class AuditError(F8TVMError):
    """The emitted program contains a multiplication that is not 8-bit x 8-bit."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class UnsupportedCPUError(F8TVMError):
    """The module was built for instructions this CPU does not have."""


class CalibrationWarning(UserWarning):
    """Calibration decided a plan that loses much of the data (e.g. most values saturate)."""

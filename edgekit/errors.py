"""The errors users are meant to see: the CLI prints them as one clear line, no traceback."""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class. `hint` tells the user what to do next (a command, a flag)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class InvalidModelError(EdgekitError):
    """The input model cannot be read (truncated, not ONNX, fails the checker)."""


class DataError(EdgekitError):
    """Calibration / evaluation data does not match the model."""


class UnsupportedOperatorError(EdgekitError):
    """A target cannot convert an operator. Names the op, the node and the target."""

    def __init__(self, op: str, node: str, target: str, detail: str = ""):
        msg = f"{target}: unsupported operator {op} (node {node!r})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.op, self.node, self.target = op, node, target


class ToolchainMissingError(EdgekitError):
    """A converter toolchain environment is not installed."""

    def __init__(self, name: str):
        super().__init__(
            f"the {name} toolchain is not installed",
            hint=f"run: edgekit toolchain install {name}",
        )
        self.name = name


class ConversionError(EdgekitError):
    """Conversion broke outside any one target (exit 1, like a failed artifact)."""

    exit_code = 1


class BackendError(EdgekitError):
    """A converter backend crashed or exited (onnx2tf calls sys.exit on failure)."""


class ConfigError(EdgekitError):
    """A config file or option is invalid."""

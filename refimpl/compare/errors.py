"""The one error type of a comparison."""

__all__ = ["CompareError"]


class CompareError(ValueError):
    """A usage or file error of a comparison (the CLI prints it as one line, exit code 2)."""

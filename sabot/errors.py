"""Exception hierarchy. Every Sabot error derives from SabotError and a built-in."""


class SabotError(Exception):
    """Base class of every error Sabot raises on purpose."""


class GraphValidationError(SabotError, ValueError):
    """A JobGraph is not a valid streaming DAG (the message names the operators)."""


class CycleError(GraphValidationError):
    """The graph has a cycle; ``cycle`` holds the operator names along it, in order."""

    def __init__(self, message, cycle=()):
        super().__init__(message)
        self.cycle = list(cycle)


class IllegalStateTransition(SabotError, RuntimeError):
    """A task or job was asked to move between two states that are not connected."""


class SlotRequestTooLarge(SabotError, ValueError):
    """A slot request asks for more cpu or memory than any registered slot has."""


class SlotsExhausted(SabotError, RuntimeError):
    """No slot could be had in time."""


class UnknownNode(SabotError, KeyError):
    """A node id that the slot pool does not know."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OperatorError(SabotError, RuntimeError):
    """User code or an operator failed; the message names the operator and function."""


class JobFailed(SabotError, RuntimeError):
    """A job ended FAILED; the message carries the failing task's error and traceback."""

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class StateInputError(SabotError, ValueError):
    """Arguments to a keyed-state table do not fit together (lengths, columns, key groups)."""


class UnsupportedStateType(SabotError, TypeError):
    """A key or value column has an Arrow type the keyed-state table cannot hold."""

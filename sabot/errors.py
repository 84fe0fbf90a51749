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


# -- control plane: what a request asked for, against what the cluster holds ---------------
#
# Domain code raises these; only the HTTP layer (sabot.cluster.web) turns them into
# status codes (400, 404, 409, 413, 504).


class InvalidRequest(SabotError, ValueError):
    """A request (a job, a rescale, a setting) is malformed or out of range; the message says
    what was wrong and what was expected."""


class PayloadTooLarge(InvalidRequest):
    """A request body larger than the server accepts (HTTP 413)."""


class NotFound(SabotError, LookupError):
    """An unknown job, operator, task, node, sink or checkpoint."""

    def __str__(self):  # LookupError subclasses would repr() a KeyError-like message
        return str(self.args[0]) if self.args else ""


class Conflict(SabotError, RuntimeError):
    """The request is valid but clashes with the current state (cancel of a finished job,
    a rescale while another runs, not enough free slots)."""


class InsecureBinding(InvalidRequest):
    """A server was asked to bind a non-loopback address without a secret."""


class ControlTimeout(SabotError, TimeoutError):
    """A task did not answer a control message that expects a reply in time."""

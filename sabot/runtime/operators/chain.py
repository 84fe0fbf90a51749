"""A chain: stateless operators fused into one task (see :mod:`sabot.execution.chaining`).

Each member is the operator it would be alone (created from its own step: type, name,
id, function, parameters), so it checks its input and names itself in its errors as it
would in a task of its own. A batch goes through the members in order on the task's
thread; nothing is queued between them. Members keep no state.
"""

import dataclasses

from sabot.errors import OperatorError
from sabot.runtime.operators.base import Operator, SideOutput, create_operator, register


@register("chain")
class Chain(Operator):
    """Calls its member operators in order: the batches one returns go into the next."""

    def __init__(self, ctx):
        super().__init__(ctx)
        steps = self.params.get("steps")
        if not isinstance(steps, list) or len(steps) < 2 or not all(isinstance(s, dict) for s in steps):
            raise OperatorError(f"chain {ctx.operator_name!r} needs parameters.steps: a list of at least two "
                                f"operators (type, name, id, function, parameters), got {steps!r:.200}")
        self.members = [create_operator(dataclasses.replace(ctx, operator={**step, "key_by": None}))
                        for step in steps]

    def open(self):
        for member in self.members:
            member.open()

    def process(self, batch, input_index):
        batches = [batch]
        for member in self.members:
            out = []
            for b in batches:
                for item in member.process(b, 0):
                    if isinstance(item, SideOutput):  # no chainable operator makes one; say so if it does
                        raise OperatorError(f"chain {self.ctx.operator_name!r}: member "
                                            f"{member.ctx.operator_name!r} emitted a side output")
                    out.append(item)
            if not out:
                return []
            batches = out
        return batches

    def close(self):
        errors = []
        for member in self.members:
            try:
                member.close()
            except Exception as exc:  # close every member; the first failure is the chain's
                errors.append(exc)
        if errors:
            raise errors[0]

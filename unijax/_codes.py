"""Integer outcome codes that carry their message, as diffrax's ``RESULTS`` do.

:class:`unijax.fit.FitStatus` (how a rate fit ended) and :class:`unijax.theory.SolveResult`
(how an ODE solve ended) are such codes: plain integers in the arrays (stored results keep
them), a ``.message`` for a person.
"""

from __future__ import annotations

import enum

__all__ = ["Coded"]


class Coded(enum.IntEnum):
    """Base of an ``IntEnum`` whose members are written ``NAME = (code, "message")``."""

    message: str

    def __new__(cls, code: int, message: str) -> Coded:
        member = int.__new__(cls, code)
        member._value_ = code
        member.message = message
        return member

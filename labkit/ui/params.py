"""A panel's knobs: each parameter of the experiment function becomes a Param (a slider, a dropdown, a
checkbox) from a spec such as ``clients=(1, 64)``, checked against the function's signature so a typo fails
when the panel is built. Re-exported by ``labkit.ui.panel``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from labkit.errors import BadParameter

_RESERVED = ("progress", "stop")


@dataclass
class Param:
    """One control: a numeric range (slider), a list of choices (dropdown) or a bool (checkbox)."""

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: Sequence[Any] | None = None
    description: str | None = None

    def check(self, value: Any) -> Any:
        """Validate a value for this parameter (used for defaults and in headless runs)."""
        if self.choices is not None:
            if value not in self.choices:
                raise BadParameter(f"{self.name}={value!r}: choose one of {list(self.choices)}")
            return value
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise BadParameter(f"{self.name}={value!r}: must be True or False")
            return value
        if self.low is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadParameter(f"{self.name}={value!r}: must be a number in [{self.low}, {self.high}]")
            if not self.low <= value <= self.high:  # type: ignore[operator]
                raise BadParameter(
                    f"{self.name}={value!r} is outside its range [{self.low}, {self.high}]: "
                    "pick a value inside it or widen the range"
                )
        return value

    @property
    def integer(self) -> bool:
        return (
            isinstance(self.default, int)
            and not isinstance(self.default, bool)
            and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))
        )


def _spec_to_param(name: str, spec: Any, default: Any) -> Param:
    """Turn ``(low, high)``, ``(low, high, step)``, a list of choices, a bool or a Param into a Param."""
    if isinstance(spec, Param):
        return spec
    if isinstance(spec, list) or (isinstance(spec, tuple) and spec and all(isinstance(s, str) for s in spec)):
        choices = list(spec)
        if not choices:
            raise BadParameter(f"{name}: the list of choices is empty")
        d = default if default is not inspect.Parameter.empty else choices[0]
        p = Param(name, d, choices=choices)
        p.check(d)
        return p
    if isinstance(spec, bool):
        return Param(name, spec if default is inspect.Parameter.empty else default)
    if (
        isinstance(spec, tuple)
        and len(spec) in (2, 3)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    ):
        low, high = spec[0], spec[1]
        if low > high:
            raise BadParameter(f"{name}=({low}, {high}): the range is reversed; write ({high}, {low})")
        step = spec[2] if len(spec) == 3 else None
        if step is not None and step <= 0:
            raise BadParameter(f"{name}: step {step} must be > 0")
        d = default if default is not inspect.Parameter.empty else low
        p = Param(name, d, low, high, step)
        p.check(d)
        return p
    raise BadParameter(
        f"{name}={spec!r}: give a range (low, high[, step]), a list of choices, a bool, or labkit.ui.Param"
    )


def params_for(fn: Callable[..., Any], specs: dict[str, Any]) -> tuple[list[Param], set[str]]:
    """The widgets a panel shows for ``fn``: one Param per knob spec (checked against fn's signature, so a
    typo fails here and not in a learner's Run), and the names of fn's parameters that get no widget."""
    sig = inspect.signature(fn)
    names = set(sig.parameters)
    unknown = set(specs) - names
    if unknown:
        raise BadParameter(
            f"{sorted(unknown)} not parameters of {fn.__name__}{sig}: fix the name or add the parameter to the function"
        )
    params: list[Param] = []
    for name, p in sig.parameters.items():
        if name in _RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in specs:
            params.append(_spec_to_param(name, specs[name], p.default))
        elif p.default is inspect.Parameter.empty:
            raise BadParameter(
                f"parameter {name!r} of {fn.__name__} has no default and no range: give it a "
                "default in the signature or a spec to panel()"
            )
        elif isinstance(p.default, bool):
            params.append(Param(name, p.default))
        else:
            params.append(Param(name, p.default))  # fixed: shown as text, passed unchanged
    return params, {n for n in _RESERVED if n in names}

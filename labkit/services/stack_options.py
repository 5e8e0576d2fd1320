"""Building a service before anything runs: the kind's options checked by name and by type against its
constructor, names checked, so a typo fails at once with the valid choices. Re-exported by
``labkit.services.stack``.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

from labkit.errors import BadParameter, LabkitError
from labkit.services import check_kind, service_class
from labkit.services.base import Service

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # a name becomes part of a directory and a container name


# options -------------------------------------------------------------------------------------
def option_names(kind: str) -> list[str]:
    """The options a service kind takes (the same for the local and docker providers)."""
    names: set[str] = set()
    for prov in ("local", "docker"):
        for p in inspect.signature(service_class(kind, prov).__init__).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "instance_dir":
                names.add(p.name)
    return sorted(names)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadParameter(
            f"service name {name!r}: use 1-63 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (e.g. name='cache-2')"
        )
    return name


def check_options(kind: str, provider: str, options: Any) -> dict[str, Any]:
    """Refuse options `kind` does not take, by name, listing the valid ones (nothing is silently ignored)."""
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise BadParameter(
            f"options for {kind} must be a dict of option names to values, got {options!r} "
            f"(e.g. {{'memory_mb': 64}}); valid options: {', '.join(option_names(kind))}"
        )
    if provider == "external":
        if options:
            raise BadParameter(
                f"the external provider points at a {kind} that already runs: it cannot apply "
                f"{', '.join(f'{k}=' for k in sorted(options))}. Drop these options, or run this "
                f"{kind} yourself with provider='local'"
            )
        return options
    valid = option_names(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise BadParameter(
            f"{kind} has no option {', '.join(repr(u) for u in unknown)}: valid options are {', '.join(valid)}"
        )
    for k, v in options.items():  # no option of any kind means anything as NaN or infinity
        if isinstance(v, float) and not math.isfinite(v):
            raise BadParameter(f"{kind} option {k}={v}: give a finite number")
    return options


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits a constructor's type hint (int, float, str, dict, list, Path, Optional, Union)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        try:
            import operator

            operator.index(value)
            return not isinstance(value, bool)
        except TypeError:
            return False
    if origin in (dict, list, tuple):
        return isinstance(value, origin)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def _check_types(kind: str, cls: type[Service], options: dict[str, Any]) -> None:
    try:
        params = inspect.signature(cls, eval_str=True).parameters  # the constructor's, annotations resolved
        hints = {n: p.annotation for n, p in params.items() if p.annotation is not inspect.Parameter.empty}
    except Exception:  # noqa: BLE001 - unresolvable hints: the constructor checks on its own
        return
    for k, v in options.items():
        if k in hints and not _matches(v, hints[k]):
            want = str(hints[k]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise BadParameter(
                f"{kind} option {k}={v!r}: expected {want}; valid options: {', '.join(option_names(kind))}"
            )


def build(kind: str, name: str, provider: str, options: dict[str, Any]) -> Service:
    """Construct (not start) a service: every option is checked here, before anything runs."""
    kind = check_kind(kind)
    check_name(name)
    check_options(kind, provider, options)
    cls = service_class(kind, provider)
    if provider != "external":
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            other = sorted(set(options) - set(params))
            if other:
                raise BadParameter(
                    f"{kind} option {', '.join(other)} does not apply to the {provider} provider "
                    f"(the {'docker' if provider == 'local' else 'local'} provider's only): drop it"
                )
        _check_types(kind, cls, options)
    try:
        if provider == "external":
            from labkit.services.external import ExternalService

            return ExternalService(name, kind=kind)
        return cls(name, **options)
    except LabkitError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # a value of the wrong type deep in a constructor
        raise BadParameter(
            f"{kind} options {options!r} are not valid ({e}): give numbers as int/float and "
            f"text as str; valid options: {', '.join(option_names(kind))}"
        ) from None

"""Fuzzing the public entry points with hypothesis: `labkit up ...` (the CLI), `labkit.stack(...)` and `st.add(...)`.

Every generated input carries at least one bad part (an unknown kind, option or provider, a value out of range or
of the wrong type, a bad name). Each must be refused with a labkit.errors exception (the CLI: exit code 2 and one
line on stderr; argparse's own usage error for a value it cannot even parse) whose message says what to do, and
no server may be left running. The counts of what the inputs got are printed at the end."""

from __future__ import annotations

import collections
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit import paths
from labkit.cli import build_parser, main, plan_up
from labkit.errors import LabkitError
from labkit.services import stack as stacks

SEEN: collections.Counter[str] = collections.Counter()
# a message that says what to do names the fix or the valid values
ADVICE = re.compile(
    r"\b(must|look like|use|give|drop|add|pass|set|check|leave|install|name each|start|one of|"
    r"valid options|expected)\b",
    re.I,
)
RAM_MB = 10**9  # above any machine's memory

weird = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.booleans(),
    st.floats(allow_nan=True),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
below = st.integers(-(10**6), 0)


def bad_int(lo: int, hi: int) -> st.SearchStrategy:
    """Values an integer option in [lo, hi] must refuse."""
    return st.one_of(
        st.integers(-(10**9), lo - 1),
        st.integers(hi + 1, 10**12),
        st.text(max_size=5),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    )


BAD_OPTIONS = {
    "memcached": st.one_of(
        st.fixed_dictionaries({"memory_mb": bad_int(2, RAM_MB)}),
        st.fixed_dictionaries({"memory_mb": st.integers(2, 64), "max_item_mb": st.integers(33, 2000)}),
        st.fixed_dictionaries({"max_item_mb": bad_int(1, 1024)}),
        st.fixed_dictionaries({"threads": bad_int(1, 64)}),
        st.fixed_dictionaries({"port": bad_int(1024, 65535)}),
        st.fixed_dictionaries(
            {"extra_args": st.one_of(st.text(max_size=4), st.lists(st.integers(), min_size=1, max_size=2))}
        ),
    ),
    "postgres": st.one_of(
        st.fixed_dictionaries({"max_connections": bad_int(5, 10_000)}),
        st.fixed_dictionaries({"shared_buffers_mb": bad_int(1, 65536)}),
        st.fixed_dictionaries({"port": bad_int(1024, 65535)}),
        st.fixed_dictionaries(
            {
                "settings": st.one_of(
                    st.text(max_size=4),
                    st.lists(st.text(), max_size=2),
                    st.dictionaries(
                        st.sampled_from(["a b", "x;y", "", "w\nz"]), st.text(max_size=3), min_size=1, max_size=2
                    ),
                )
            }
        ),
        st.fixed_dictionaries({"password": st.one_of(st.just(""), st.integers(), st.just("two\nlines"))}),
    ),
    "cassandra": st.one_of(
        st.fixed_dictionaries(
            {
                "nodes": st.one_of(
                    st.text(max_size=12).filter(
                        lambda t: (
                            not re.fullmatch(
                                r"\s*[A-Za-z][A-Za-z0-9_-]{0,31}\s*:\s*[1-9]\s*(,\s*[A-Za-z][A-Za-z0-9_-]{0,31}"
                                r"\s*:\s*[1-9]\s*)*",
                                t,
                            )
                        )
                    ),
                    st.integers(),
                    st.dictionaries(
                        st.sampled_from(["us", "eu"]), st.integers(-3, 0) | st.integers(10, 99), min_size=1
                    ),
                )
            }
        ),
        st.fixed_dictionaries({"heap_mb": bad_int(128, 32768)}),
        st.fixed_dictionaries(
            {
                "inter_dc_delay_ms": st.one_of(
                    st.floats(max_value=-1e-3), st.just(math.nan), st.just(math.inf), st.text(max_size=3)
                )
            }
        ),
        st.fixed_dictionaries({"profile": st.text(max_size=6).filter(lambda t: t not in ("light", "full", "ci"))}),
    ),
}
KINDS = ("postgres", "memcached", "cassandra")
bad_kind = st.text(max_size=10).filter(lambda t: t.strip().lower() not in KINDS) | weird
bad_name = st.one_of(st.sampled_from(["", "../up", "a b", "x/y", "-lead", "é", "a" * 64]), st.integers(), st.booleans())
unknown_option = st.text(min_size=1, max_size=10).filter(
    lambda t: (
        t
        not in {
            "memory_mb",
            "max_item_mb",
            "threads",
            "port",
            "extra_args",
            "image",
            "max_connections",
            "shared_buffers_mb",
            "settings",
            "password",
            "nodes",
            "heap_mb",
            "inter_dc_delay_ms",
            "jitter_ms",
            "profile",
            "yaml_overrides",
        }
    )
)


def running() -> set[str]:
    """The instance directories of this run: every server labkit starts gets one before its process runs
    (a cheap check per input; the module ends with a full process scan)."""
    return {d.name for d in paths.instances_dir().iterdir()}


def refused(e: BaseException, where: str) -> None:
    """The error must be labkit's own, one line of advice, not an internal failure."""
    assert isinstance(e, LabkitError), f"{where}: {type(e).__name__}: {e}"
    msg = str(e)
    assert msg and ADVICE.search(msg), f"{where}: message gives no advice: {msg!r}"
    SEEN[f"{type(e).__name__}"] += 1


@pytest.fixture(scope="module")
def fuzz_stack():
    procs = {p.pid for p in stacks.strays([str(paths.instances_dir())])}
    with labkit.stack("memcached", attach=False) as s:
        yield s
        assert {p.pid for p in stacks.strays([str(paths.instances_dir())])} - procs == {
            r["pid"] for r in s.service("memcached").pids()
        }, "a fuzzed input left a server running"
    with capsys_disabled():
        print(f"\nfuzz: {sum(SEEN.values())} inputs; {dict(sorted(SEEN.items()))}")


class capsys_disabled:  # noqa: N801 - print through pytest's capture at module teardown
    def __enter__(self) -> None:
        import sys

        self._out = sys.stdout
        sys.stdout = sys.__stdout__

    def __exit__(self, *exc: object) -> None:
        import sys

        sys.stdout = self._out


FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(data=st.data())
def test_fuzz_stack_and_add_refuse_bad_input_and_start_nothing(fuzz_stack, data):
    before, records = running(), len(stacks.all_records())
    how = data.draw(st.sampled_from(["kind", "option", "value", "provider", "name", "options-shape"]))
    kind = data.draw(st.sampled_from(["postgres", "memcached"]))
    try:
        if how == "kind":
            labkit.stack(data.draw(bad_kind), attach=False)
        elif how == "option":
            fuzz_stack.add(kind, name="fz", **{data.draw(unknown_option): data.draw(weird | st.integers())})
        elif how == "value":
            fuzz_stack.add(kind, name="fz", **data.draw(BAD_OPTIONS[kind]))
        elif how == "provider":
            labkit.stack(
                kind,
                attach=False,
                provider=data.draw(
                    st.text(min_size=1, max_size=8).filter(
                        lambda t: t.strip().lower() not in ("local", "docker", "external", "auto", "")
                    )
                    | st.integers()
                    | st.lists(st.text(), max_size=1)
                ),
            )
        elif how == "name":
            fuzz_stack.add(kind, name=data.draw(bad_name))
        else:
            labkit.stack(
                kind,
                attach=False,
                **{
                    kind: data.draw(
                        weird.filter(lambda v: not isinstance(v, dict))
                        | st.dictionaries(unknown_option, weird, min_size=1, max_size=2)
                    )
                },
            )
    except BaseException as e:  # noqa: BLE001 - judged below
        refused(e, f"{how} {kind}")
    else:
        pytest.fail(f"bad input accepted ({how}, {kind}): {data}")
    assert set(fuzz_stack.services) == {"memcached"}
    assert running() == before and len(stacks.all_records()) == records


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_every_kinds_options_are_checked_before_anything_runs(kind, data):
    """Construction alone (no start) refuses bad values of every kind, Cassandra included."""
    opts = data.draw(BAD_OPTIONS[kind])
    with pytest.raises(LabkitError) as info:
        stacks.build(kind, kind, "local", opts)
    refused(info.value, f"build {kind} {opts!r}")


cli_value = st.one_of(
    st.integers(-(10**6), 10**10).map(str),
    st.text(max_size=6),
    st.floats().map(str),
    st.sampled_from(["nan", "inf", "-0", "1e3", "us:0", "us:2,eu", ":", "us:9,us:1"]),
)


@FUZZ
@given(
    services=st.lists(st.sampled_from(KINDS) | st.text(max_size=8), max_size=3),
    flags=st.dictionaries(
        st.sampled_from(["--memory-mb", "--nodes", "--inter-dc-delay-ms", "--postgres-servers", "--provider"]),
        cli_value,
        max_size=3,
    ),
)
def test_fuzz_cli_up(services, flags, capsys):
    argv = ["up", *services]
    for flag, value in flags.items():
        argv += [f"{flag}={value}"]
    before, records = running(), len(stacks.all_records())
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse could not even parse it: usage line and the reason, exit 2
        assert e.code == 2
        err = capsys.readouterr().err
        assert "usage: labkit" in err and "error:" in err
        SEEN["argparse usage error"] += 1
        return
    try:
        plan_up(args)
    except LabkitError as e:
        refused(e, f"labkit {' '.join(argv)}")
        assert main(argv) == 2  # the command itself stops at the same check
        out, err = capsys.readouterr()
        assert err.startswith("labkit: ") and "Traceback" not in err and "starting" not in out
        assert running() == before and len(stacks.all_records()) == records
        return
    except BaseException as e:  # noqa: BLE001
        pytest.fail(f"labkit {' '.join(argv)}: {type(e).__name__}: {e}")
    SEEN["valid (checked, not started)"] += 1  # a valid plan: not started here (that is test_stack_cli's job)

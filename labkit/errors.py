"""Errors raised by labkit. Every message says what happened and what to do next."""

from __future__ import annotations


class LabkitError(Exception):
    """Base class of every error labkit raises on purpose."""


class UnknownService(LabkitError, ValueError):
    """A service kind or instance name that labkit does not know."""


class BinaryNotFound(LabkitError):
    """A server binary (postgres, memcached, java) is not installed where labkit looks."""


class PortInUse(LabkitError):
    """A port labkit was asked to use is taken by another program."""


class StateError(LabkitError):
    """The state directory or a stack record is corrupt, stale or missing."""


class ServiceFailed(LabkitError):
    """A server did not start or stopped answering; the message carries the tail of its log."""


class NotRunning(LabkitError):
    """The operation needs a running service or stack and there is none."""


class ProviderUnavailable(LabkitError):
    """The requested provider (docker, external) cannot be used on this machine."""


class BadParameter(LabkitError, ValueError):
    """A parameter of an experiment or a service is out of range."""


class InsufficientResources(LabkitError):
    """Not enough memory (or another resource) for what was requested."""


class CheckpointFailed(LabkitError, AssertionError):
    """A lesson's measured claim did not hold; the message says what was measured and the bound."""


class ResourceLimitUnavailable(LabkitError):
    """This machine does not let labkit cap CPU or memory (no writable cgroups): the lesson measures without."""

"""labkit: real servers and measurement tools for the Scaling Labs course."""
__version__ = "0.1.0"

from labkit.errors import LabkitError
from labkit.services.base import Endpoint, Health, Service
from labkit.services.stack import Stack, stack

__all__ = ["stack", "Stack", "Endpoint", "Health", "Service", "LabkitError", "__version__"]

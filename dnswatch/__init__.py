"""dnswatch: who resolved what, when, and what did they get."""

__version__ = "0.1.0"

# the hot modules load from their Cython build when it is current, else from their .py (see speedups.py)
from dnswatch import speedups as _speedups  # noqa: E402

_speedups.install()

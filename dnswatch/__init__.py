"""dnswatch: who resolved what, when, and what did they get."""

__version__ = "0.1.0"

"""loginstorm's simulation side: scenario files, distributions, backoff policies and engines."""

__version__ = "0.1.0"

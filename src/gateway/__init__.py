"""gateway: a small remote-admin daemon on Twisted."""

__version__ = "0.1.0"

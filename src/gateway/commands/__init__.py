"""One module per command; :mod:`gateway.core.command` has the shared shape."""

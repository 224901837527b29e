"""One module per command; :mod:`gateway.commands.base` has the shared shape."""

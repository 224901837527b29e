"""The front-ends: the line server, the WebSocket and the HTTP site.  None imports
another."""

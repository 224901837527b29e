"""Transport-neutral conversations: the line conversation (TCP, WebSocket text),
the JSON conversation, and how events read as text.  Import the core only."""

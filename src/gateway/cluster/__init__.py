"""What several gateway processes share through Redis: the client quota,
the per-address limit, the command rate limit and the login lockout."""

"""The command protocol and what every layer shares: the service, events, errors,
the quota, rate limit, tokens, back-pressure and metrics.  Imports no command,
session or front-end."""

from gateway.cli import entry

entry()

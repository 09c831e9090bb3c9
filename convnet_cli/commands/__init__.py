"""One module per CLI command; each defines a click command named `command`. cli.py adds them to the group."""

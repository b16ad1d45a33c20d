"""Mars command line and client: they sit on top of the local runtime and the HTTP API."""

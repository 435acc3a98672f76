"""Admin API: the verbs of the CLI as one Python class, served as HTTP/JSON on a unix socket."""

"""One module per command; each has ``register(subparsers)``. Shared flags are in ``common``."""

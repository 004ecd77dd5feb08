"""Errors shared across the library, raised for bad input with a message that says what to do."""


class CheckpointError(ValueError):
    """A model, VAE or text-encoder file that cannot be used: damaged, the wrong kind of file, or with
    missing/unexpected keys."""

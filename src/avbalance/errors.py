"""User-facing errors: printed as one line by the command line, never as a traceback."""


class AvbalanceError(Exception):
    """A mistake in the user's input (config, data, checkpoint, arguments).

    The message is a single line that names the offending file or setting and the problem.
    """


class ConfigError(AvbalanceError):
    """An invalid configuration value or key."""


class DataError(AvbalanceError):
    """Missing, corrupt or inconsistent data."""


class CheckpointError(AvbalanceError):
    """A checkpoint that cannot be loaded safely or does not match the model."""

"""Exception types. The CLI prints any :class:`JaxformerError` as one line and exits 2."""


class JaxformerError(Exception):
    """Base class for errors caused by the user's input (config, files, prompts, ...)."""


class ConfigError(JaxformerError, ValueError):
    """A configuration value or key is invalid. The message names the field and value."""


class DataError(JaxformerError, ValueError):
    """A data file or text is missing, empty, unreadable or cannot be tokenized."""


class CheckpointError(JaxformerError):
    """A checkpoint or run folder is missing, incomplete or does not match the config."""


class GenerationError(JaxformerError, ValueError):
    """Bad generation input: prompt length, token ids or sampling parameters."""

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


class MissingExtraError(JaxformerError, ImportError):
    """An optional dependency is not installed. The message names the extra to install
    (``pip install -e ".[hf]"``)."""


def require_extra(extra: str, *modules: str, what: str) -> None:
    """Import ``modules``; if one is missing, raise :class:`MissingExtraError` saying that
    ``what`` needs the ``extra`` extra."""
    import importlib
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtraError(f"{what} needs {name}, which is not installed: "
                                    f'pip install -e ".[{extra}]" (or pip install "jaxformer[{extra}]")') from None


class RunExistsError(CheckpointError):
    """A new run was asked for in a folder that already holds a run with checkpoints
    (``resume=False``). ``run_dir`` is that folder; the CLI names its own flags for it."""

    def __init__(self, run_dir):
        self.run_dir = str(run_dir)
        super().__init__(f"{self.run_dir!r} already holds a run with checkpoints; pass resume=True to "
                         "continue it or choose another out_dir")

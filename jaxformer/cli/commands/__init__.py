"""CLI subcommands. Each module here defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; list it in ``COMMANDS`` to make it a ``jaxformer`` subcommand.
Command modules import heavy libraries (jax, torch) inside ``run`` so ``jaxformer --help`` stays fast."""

COMMANDS = {
    "attention": "jaxformer.cli.commands.attention",
    "info": "jaxformer.cli.commands.info",
    "sample": "jaxformer.cli.commands.sample",
    "score": "jaxformer.cli.commands.score",
    "fill": "jaxformer.cli.commands.fill",
    "train": "jaxformer.cli.commands.train",
    "bench": "jaxformer.cli.commands.bench",
    "convert": "jaxformer.cli.commands.convert",
    "prepare": "jaxformer.cli.commands.prepare",
}


def config_names() -> str:
    """The shipped config names, comma-separated (for ``--config`` help texts)."""
    from jaxformer.config import shipped_configs
    return ", ".join(shipped_configs())


def add_config_arguments(p) -> None:
    """``--config FILE`` and repeatable ``--set section.key=value`` (shared by the commands)."""
    p.add_argument("--config", metavar="FILE|NAME", help=f"YAML config file, or the name of a shipped "
                   f"config ({config_names()}) (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.n_layer=2 (repeatable)")

"""CLI subcommands. Each module here defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; list it in ``COMMANDS`` to make it a ``jaxformer`` subcommand.
Modules are imported only when their command runs, so ``jaxformer --help`` stays fast."""

COMMANDS = {
    "info": "jaxformer.commands.info",
}

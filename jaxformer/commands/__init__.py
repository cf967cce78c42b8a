"""CLI subcommands. Each module here defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; list it in ``COMMANDS`` to make it a ``jaxformer`` subcommand.
Command modules import heavy libraries (jax, torch) inside ``run`` so ``jaxformer --help`` stays fast."""

COMMANDS = {
    "attention": "jaxformer.commands.attention",
    "info": "jaxformer.commands.info",
    "sample": "jaxformer.commands.sample",
    "score": "jaxformer.commands.score",
    "train": "jaxformer.commands.train",
    "bench": "jaxformer.commands.bench",
    "convert": "jaxformer.commands.convert",
}

"""One module per `pegasus-gsg` subcommand: `add_arguments(parser)` and `run(args) -> int`."""

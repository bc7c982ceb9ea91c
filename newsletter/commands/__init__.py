"""The commands, one module per family, each imported only when one of its commands runs
(see `cli.Commands`): the modules import `cli` for what every command shares, never the
other way round."""

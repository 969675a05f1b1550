"""The command line's subcommands, one module each (`add_arguments`, `paths`, `run`): thin, they parse options and
call the stages."""

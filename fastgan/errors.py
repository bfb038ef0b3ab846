"""User-facing errors. Anything a user can cause by bad input (a missing file, a wrong flag value,
a checkpoint of another model) raises UserError with one line that names the input and what to do;
the command-line entry points print it without a traceback and exit with code 2."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


EXIT_USAGE = 2

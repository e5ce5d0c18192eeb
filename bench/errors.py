"""User-facing errors: the message names the problem and the valid choices."""


class BenchError(ValueError):
    """Bad input from a user (config, command line, spec). Printed without a traceback."""


def choices_message(kind: str, name, valid) -> str:
    valid = sorted(valid)
    return f"unknown {kind} {name!r}; valid choices: {', '.join(valid)}"

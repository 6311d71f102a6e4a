"""`hfmm convert ...`: work in progress (issue #14)."""


def add_convert_command(commands) -> None:
    pass

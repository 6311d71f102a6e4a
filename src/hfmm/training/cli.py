"""`hfmm train ...`: work in progress (issue #14)."""


def add_train_command(commands) -> None:
    pass

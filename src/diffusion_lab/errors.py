"""One exception type for mistakes a user can fix; entry points print it as one line."""


class UserError(Exception):
    """Bad input (config value, file, checkpoint). The message names the key and what is allowed."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)

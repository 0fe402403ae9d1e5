"""Output files written atomically: a temporary file in the same folder, fsync, then a rename.

A reader (or a resumed run) sees either the previous file or the complete new one, never half
a file: a rename within one folder is atomic on POSIX filesystems, and a temporary file in the
system temp dir could sit on another filesystem, where the final move is a copy. A full disk
or an exceeded quota ends as one UserError line naming the file and the free space, with the
temporary file removed and the previous file untouched.
"""

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from diffusion_lab.errors import UserError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EROFS, errno.EPERM}


def temp_path(path: Path) -> Path:
    """Hidden, and without the final suffix, so that globs for `*.ckpt` or `*.png` skip it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"  # pragma: no cover


def write_error(path: Path, error: OSError, hint: str = "") -> UserError | None:
    """The one-line UserError for a write that failed for a reason the user can fix, else None."""
    hint = f"; {hint}" if hint else ""
    if error.errno in _NO_SPACE:
        reason = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        return UserError(
            f"cannot write {path}: {reason} ({free_space(path.parent)} free there); "
            f"any earlier {path.name} is unchanged{hint}"
        )
    if error.errno in _NOT_WRITABLE:
        return UserError(f"cannot write {path}: {error.strerror}{hint}")
    return None


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, fsync: bool = True, hint: str = "", **open_args: Any
) -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; on a clean exit fsync it and rename it
    over `path`. On any exception the temporary file is removed and `path` left as it was.

        with atomic_write(out / "samples.png") as f:
            save_image(grid, f, format="png")   # a file object: give the format explicitly
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    if "b" not in mode:
        open_args.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            if fsync:  # the data on disk before the rename makes it visible
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        error = write_error(path, e, hint)
        if error is None:
            raise
        raise error from None
    except BaseException:  # KeyboardInterrupt, a failing writer: no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise

"""What the `fastrobust` command line reports as a one-line error (exit status 2) instead of a
traceback: the user's mistakes (CLIError) and the machine's state (OSErrors such as a
read-only folder or a full disk). Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import errno
from typing import Any, Optional

# OSErrors that say something about the user's files or machine, not about fastrobust.
USER_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.EISDIR: "is a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
    errno.ENOENT: "no such file or folder",
}

HINTS = {
    errno.ENOSPC: "free some space (a run continues with --resume)",
    errno.EDQUOT: "free some space (a run continues with --resume)",
    errno.EACCES: "check its permissions, or write elsewhere with --out",
    errno.EPERM: "check its permissions, or write elsewhere with --out",
    errno.EROFS: "write elsewhere with --out",
}


class CLIError(Exception):
    """A user error: fastrobust.cli prints `fastrobust COMMAND: error: MESSAGE` (one line) and
    exits with status 2."""


def one_line(message: Any) -> str:
    """The message on one line (exception texts may span several)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def user_os_error(exc: OSError) -> Optional[str]:
    """The one-line message of an OSError caused by the user's files or machine (USER_ERRNOS),
    naming the file, or None for any other OSError: "runs/a/last.pt: No space left on device
    (ENOSPC); free some space (a run continues with --resume)"."""
    if exc.errno not in USER_ERRNOS:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    hint = HINTS.get(exc.errno)
    text = f"{where}{exc.strerror or USER_ERRNOS[exc.errno]} ({errno.errorcode[exc.errno]})"
    return one_line(text + (f"; {hint}" if hint else ""))

"""Writing files so that an interrupted run never leaves half of one."""

from __future__ import annotations

import os


def atomic_write(path: str | os.PathLike, data: bytes | str) -> str:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through a temporary file and a rename; returns the path."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: leave neither half a file nor the temporary one
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path

"""Tar archives built in memory, as a job's container would send them (the workspace and side-channel tests)."""

from __future__ import annotations

import io
import tarfile


def tar_bytes(files: dict[str, bytes], *, format: int = tarfile.DEFAULT_FORMAT) -> bytes:
    """An uncompressed tar of regular files, padded to a full record as GNU tar and Python write it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()

"""An fsspec filesystem for the worker-death test: the local disk, except that opening a file for which
`FILE.die` exists removes that marker and ends the process at once, as a crashed or killed worker would."""

from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.local import LocalFileSystem


class DyingFileSystem(LocalFileSystem):  # type: ignore[misc]
    protocol = "dying"

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        marker = self._strip_protocol(path) + ".die"
        try:
            os.unlink(marker)  # the first opener claims the death; the retried task lives
        except FileNotFoundError:
            return super()._open(path, mode, **kwargs)
        os._exit(17)

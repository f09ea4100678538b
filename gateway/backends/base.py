"""The interface every model server implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs one model version on a batch of already-preprocessed inputs."""

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` has shape [N, *input dims]; returns [N, *output dims]."""
        ...

    def close(self) -> None: ...

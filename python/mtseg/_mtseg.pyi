"""Type hints of the native module (python/src/lib.rs)."""

from typing import Optional, Tuple

import numpy as np

__version__: str

def segment(
    image: np.ndarray, affine: np.ndarray, task: Optional[str], model: Optional[str]
) -> Tuple[np.ndarray, str]: ...
def segment_file(
    input: str,
    output: str,
    task: Optional[str],
    model: Optional[str],
    probabilities: Optional[str],
) -> str: ...
def read(path: str) -> Tuple[np.ndarray, np.ndarray]: ...

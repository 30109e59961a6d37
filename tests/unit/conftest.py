"""Put the checkout on ``sys.path`` so the unit tests import the package from it.

The package is not installed in the test environment, and pytest's default
import mode adds only the test directories to ``sys.path``.
"""

import sys
from pathlib import Path

_REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])
if _REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, _REPOSITORY_ROOT)

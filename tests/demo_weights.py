"""Tests that run the bundled demo model need its trained weights in videossm_core/demo/weights.

The weights ship with the project, so a missing file is a defect (a broken checkout or export), not a
reason to skip: these tests fail and say how to restore the files.
"""

import pytest

from videossm_core.demo.bundle import DEMO_DIR, demo_files_present

DEMO_MISSING = (f"the shipped demo weights are missing from {DEMO_DIR}: restore them from git "
                "(`git checkout -- videossm_core/demo/weights`) or retrain and export them with "
                "`python -m videossm_core.training demo --workdir runs/demo` (see videossm_core/training/README.md)")


def require_demo_weights() -> None:
    """Inside a test or fixture: fail with the message above when a demo file is missing."""
    if not demo_files_present():
        pytest.fail(DEMO_MISSING)


# Marks a test (or, as ``pytestmark``, a module) as needing the files; the fixture is in tests/conftest.py.
needs_demo_weights = pytest.mark.usefixtures("demo_weights")

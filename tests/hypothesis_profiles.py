"""Hypothesis profiles, loaded by conftest.py (kept apart so that loading them imports nothing heavy).

Property-based tests are derandomized (the same examples on every run, no example database) unless random
exploration is asked for with HYPOTHESIS_PROFILE=explore. CI (CI=true) always runs the derandomized profile, so a
test that passes once passes every time; a failure found by exploring becomes an @example or a fix.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""Shared test set-up: hypothesis profiles, float64 oracle defaults."""

import os

import pytest
from hypothesis import HealthCheck, settings

# CI: derandomized, no deadline, fewer examples so the suite stays under 10 minutes on 2 cores.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", deadline=None, max_examples=300, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["fast", "reference"])
def mode(request):
    """Run the test once with the fast kernels and once with the plain formulas only."""
    from refimpl import switch

    with switch.fast() if request.param == "fast" else switch.reference():
        yield request.param

"""Fixtures of the integration tests: a real Redis and the engine, with LS replaced by the fake.

A test module overrides ``settings`` (or ``context``) when it needs other settings.
"""

import pytest

from backend.app import create_app
from tests.integration.fake_ls import FakeLabelStudio
from tests.service_fixtures import r, redis_server, redis_url, settings, tiny_encoder  # noqa: F401
from workers.context import WorkerContext


@pytest.fixture
def ls():
    """Project 1 of the fake LS: 30 short reviews, eight of them labelled."""
    return FakeLabelStudio.reviews()


@pytest.fixture
def context(settings, ls):  # noqa: F811
    """The workers' context: the test's settings, LS replaced by the fake."""
    return WorkerContext.from_settings(settings, client_factory=ls.client)


@pytest.fixture
def web(settings):  # noqa: F811
    """The web app's test client with the test's settings."""
    return create_app(settings).test_client()

from tests.service_fixtures import r, redis_server, redis_url, settings, tiny_encoder  # noqa: F401

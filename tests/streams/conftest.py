import pytest

from tests.streams.kafka_harness import require_broker


@pytest.fixture(scope="module")
def bootstrap() -> str:
    """The local broker (deploy/kafka/start.sh); skips without one, fails if NOTIFGUARD_KAFKA_REQUIRED=1."""
    return require_broker()

from tests.integration.kafka_fixtures import *  # noqa: F403
from tests.integration.pd_fixtures import *  # noqa: F403

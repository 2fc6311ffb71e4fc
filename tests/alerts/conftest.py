from tests.support.slack_api import slack_api  # noqa: F401  (a fixture)

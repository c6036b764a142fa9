"""loginstorm's load-test side: Locust device users that replay a scenario against a real endpoint.

It imports `sim`'s pure modules (policies, distributions, scenarios), never the other way round.
"""

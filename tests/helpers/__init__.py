"""Helpers shared by the tests: browsers, live panels, the fake enterprise API, Redis topologies, ports."""

"""The customer directory: who is on the other end, with their orders, tickets and products.

`models` holds the shapes of the enterprise's customer API (CONTRACT.md) and the `Directory`
protocol; `sample`, `http` and `plugins` are the upstreams; `cache` puts Redis (and a small
in-process tier) in front of whichever one is configured.
"""

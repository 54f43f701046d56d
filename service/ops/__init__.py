"""The operations dashboard over the audit stream: its handlers, the `ops` consumer group's counters,
and the live feed."""

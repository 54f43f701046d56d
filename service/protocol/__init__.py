"""Pure rules, no I/O and no clock reads: Sobot's surfaces and query parsing, the sign formulas, card and
ticket validation, and our own session tokens, origins and rate limits. Tested with tables."""

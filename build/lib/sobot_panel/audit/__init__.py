"""The audit stream: every ticket and card recorded before it reaches Sobot (producer and local spool),
read back through consumer groups (reader), and from the command line (cli)."""

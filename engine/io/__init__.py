"""I/O around the pure engine: sources, alert sinks, the durable outbox and HTTP."""

"""Converters from outside data sets into sloburn NDJSON events."""

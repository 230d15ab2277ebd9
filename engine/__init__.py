"""sloburn: streaming SLO burn-rate alert evaluator.

One pure engine (no I/O, no clock) and three drivers: the daemon (Kafka in, PagerDuty out),
the backtester (files in event time) and the strategy benchmark.
"""

__version__ = "0.1.0"

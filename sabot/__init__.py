"""Sabot: Flink-style stream processing for Python over Apache Arrow."""

__version__ = "0.1.0"

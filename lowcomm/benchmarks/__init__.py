"""Measuring communication: ``lowcomm bench`` and ``lowcomm project``, a cost model's projections,
reports, and step-speed and simulation-throughput measurements."""

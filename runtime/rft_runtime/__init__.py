"""Runs one RFT job: config, tasksets, workflows, algorithms, the tinker backend and the local engine."""

__version__ = "0.1.0"

"""Runnable jobs: the demo, dataset converters, cluster launcher and benchmark runners."""

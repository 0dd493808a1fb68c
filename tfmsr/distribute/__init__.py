"""Distributed training: the strategy from ``TF_CONFIG``, the local cluster launcher, the progress callback."""

"""Kubernetes manifests for tfmsr clusters (see README.md)."""

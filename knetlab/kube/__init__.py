"""Kubernetes inside the lab."""

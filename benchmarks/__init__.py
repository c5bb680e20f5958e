"""Benchmarks that print figures side by side with a reference run in the same process.

Run each as a module from the repository root, e.g. ``python -m benchmarks.train_throughput``;
``benchmarks/gpu_session.sh`` runs every GPU measurement in one go.
"""

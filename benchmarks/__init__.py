"""Benchmarks for issue 5, "Fast at every scale". Run each as ``python -m benchmarks.<name>``; see BENCHMARKS.md."""

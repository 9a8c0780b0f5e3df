"""Benchmarks: `python -m vllm_machete_plugin.bench {kernels,e2e,soak,profile}`."""

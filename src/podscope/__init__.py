"""podscope: per-pod network and process signals from eBPF, on tracepoint-only kernels."""

__version__ = "0.1.0"

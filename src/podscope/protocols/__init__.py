"""Protocol parsers: pure functions over bytes, no BPF, no I/O."""

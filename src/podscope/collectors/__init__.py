"""Collectors: the user-space half of each BPF program family."""

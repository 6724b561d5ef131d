"""Sinks: where numbers and records go. A sink never knows which hooks exist."""

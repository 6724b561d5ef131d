"""Uprobes on the TLS libraries and Go binaries that processes map: finding them (procs, elf) and
attaching each file once however many processes map it (manager)."""

"""The vocabulary every other folder shares, with no I/O: the event and output Structs
(`models`), bytes to events and back (`codec`), topic names and partitioning (`topics`),
settings (`config`), tokens and roles (`auth`), dead-letter records (`deadletters`), the
one list of suppression reasons (`reasons`), the per-event counter names (`counters`)
and the worker's batch types (`batch`).

Imports: the standard library, msgspec and this folder only.
"""

"""Pure rules of the transaction service (no I/O, no clock, no randomness).

``model`` — kinds, statuses, the allowed transitions and the records;
``machine`` — the state machine: the next effect for a transaction and what an
effect's outcome changes; ``fx`` — quotes, spread and rounding; ``requests`` —
what a request must meet before anything is written; ``errors`` — the rules as
problem types.
"""

"""Pure fraud rules: no I/O, no clock; every input is passed in.

- :mod:`.transactions`  the screening request / transaction event shape, strictly parsed
- :mod:`.profiles`      per-customer and per-counterparty state, ``apply(event)``, bounded
                        versioned serialisation for Redis
- :mod:`.features`      a transaction against its parties' history (``compute_features``)
- :mod:`.expressions`   the CEL environment (typed ``txn``, ``features``, ``now``)
- :mod:`.rules`         rules, ``compile_rule`` / ``validate_rule``, the versioned ``RuleSet``
- :mod:`.decision`      outcomes, actions, severities, the screening ``Decision``
- :mod:`.detectors`     streaming typologies and ``observe`` (detect, then apply)
"""

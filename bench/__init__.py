"""sendguard's benchmark: `python -m bench [--quick] [--json PATH] [--runs N] [--drills]`.

Starts everything it needs on loopback (its own redis-server, an aiosmtpd sink, `sendguard run`
daemons, a bare FastAPI app), runs each scenario several times, and reports every figure next to
a reference measured in the same run, because only such ratios survive a shared, noisy machine.
"""

"""Results: transfer metrics, the results file, per-test recording, the summary, compare and its chart.

May import: kvtest.run.messages, kvtest.host.fingerprint, each other.
"""

"""Ascend host facts: devices, device pool, rank table, environment checks, fingerprint.

May import: the standard library and each other only.
"""

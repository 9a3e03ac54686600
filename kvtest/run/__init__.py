"""The run: leader/follower protocol, messages, merging, rendezvous, test scope, launching, topology.

May import: kvtest.settings, kvtest.state, kvtest.host, kvtest.results, kvtest.backends.protocol.
"""

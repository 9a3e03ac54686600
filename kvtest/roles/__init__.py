"""Which role this process plays: the topology's roles (``topology.py``) and what a launcher (torchrun,
LWS, Ascend Operator, MPI, Slurm) says about this process (``engines.py``). Imports nothing of kvtest's:
``settings`` builds on it."""

# The kvtest plugin is loaded through its pytest11 entry point (pip install -e .); nothing else here.

"""The real llm_datadist (hicann/hixl), built on CPU against its own unit-test stubs.

``kvtest upstream build`` turns the pinned archives (``archives.py``) into a cache folder keyed by their
sha256 (``cache.py``): a fake CANN install and third-party folder (``stage.py``), hixl's own CMake test
build (``build.py``), the importable package plus the wrapper libraries under ``<cache>/<key>/python``,
and our HCCL transport (``transport.py``, C++ in ``transport/``) that lets two processes move bytes
through the real C++. ``selfcheck.py`` runs hixl's own Python unit tests on the result.
Nothing here imports the rest of kvtest.
"""

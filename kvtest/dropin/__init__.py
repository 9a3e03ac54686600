"""Run unmodified llm_datadist programs on the sim: ``kvtest run`` and the import shims it provides.

``shims/`` holds stand-ins for ``llm_datadist``, ``torch_npu`` and ``torchair``. They are put on
``PYTHONPATH`` only for the commands ``kvtest run`` starts on sim (see :mod:`kvtest.dropin.environment`);
an ordinary Python process never sees them.
"""

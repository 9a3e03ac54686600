"""Stand-ins for ``llm_datadist``, ``torch_npu`` and ``torchair``: this folder goes on ``PYTHONPATH``
(never imported as ``kvtest.dropin.shims``) for the commands ``kvtest run`` starts on sim."""

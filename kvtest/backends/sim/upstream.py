"""Known upstream bugs the sim reproduces, and ``KVTEST_SIM_FIXED`` to make it behave as if fixed.

The sim follows the real llm_datadist also where the real one is wrong (kvtest.known_issues lists
those issues; their tests are strict xfails). ``KVTEST_SIM_FIXED=<id>[,<id>]``, read where the
sim's context is built (:mod:`kvtest.backends.sim.context`), makes the sim behave as a release with
the fix would: that is how kvtest's own tests show a fixed issue turning into a strict XPASS
("fixed upstream: drop the entry").
"""

from __future__ import annotations

from collections.abc import Mapping

ENV_VAR = "KVTEST_SIM_FIXED"

#: issue id -> what the sim does differently when the id is named
REPRODUCED = {
    "transfer-layers-absolute-dst-index": (
        "transfer_cache_async maps source layer i to list(dst_layer_range)[i - src start]"
    ),
}


def parse_fixed(text: str) -> frozenset[str]:
    """The issue ids in ``text`` (comma-separated); ValueError naming an id the sim does not reproduce."""
    ids = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(ids - set(REPRODUCED))
    if unknown:
        accepted = ", ".join(sorted(REPRODUCED))
        raise ValueError(f"{', '.join(unknown)} is not an issue the sim reproduces; accepted: {accepted}")
    return ids


def fixed_from_env(env: Mapping[str, str]) -> frozenset[str]:
    """The ids ``KVTEST_SIM_FIXED`` names in ``env``."""
    return parse_fixed(env.get(ENV_VAR, ""))

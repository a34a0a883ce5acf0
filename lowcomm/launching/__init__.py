"""Launching workers behind real bandwidth limits: network namespaces joined by tc-tbf links
(:mod:`~lowcomm.launching.netns`) and one torchrun agent per namespace
(:mod:`~lowcomm.launching.limited`). Used by ``lowcomm train`` and ``lowcomm bench``."""

"""Starting a run's processes: in one process or under torchrun (:mod:`~lowcomm.launching.launch`),
each worker's entry (:mod:`~lowcomm.launching.worker`), live groups under torchft
(:mod:`~lowcomm.launching.live`), the run directory (:mod:`~lowcomm.launching.rundir`), and workers
behind real bandwidth limits: network namespaces joined by tc-tbf links
(:mod:`~lowcomm.launching.netns`) and one torchrun agent per namespace
(:mod:`~lowcomm.launching.limited`)."""

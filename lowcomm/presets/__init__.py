"""Recipes shipped with lowcomm: ``--preset NAME`` reads ``NAME.yaml`` from this package (see
:func:`lowcomm.training.config.read_preset`)."""

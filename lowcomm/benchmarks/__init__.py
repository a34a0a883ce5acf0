"""Measuring communication: a cost model of the network and real bandwidth limits to run under."""

"""How workers talk: a small communicator interface and its implementations."""

from lowcomm.communication.communicator import CommStats, Communicator, Handle, ProcessGroupCommunicator

__all__ = ["CommStats", "Communicator", "Handle", "ProcessGroupCommunicator"]

"""lowcomm inside the trainers people already use, each on hook mode (``with strategy:``).

Each integration is imported on its own, so that its framework is loaded only where it is used:
:mod:`lowcomm.integrations.transformers` (Hugging Face ``Trainer``) and
:mod:`lowcomm.integrations.lightning` (Lightning ``Strategy``).
"""

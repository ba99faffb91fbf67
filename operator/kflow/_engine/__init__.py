"""The engine: what replays a workflow handler, one segment at a time, against the store.

What the rest of kflow uses is exported here; the modules inside are the engine's own.
"""

from kflow._engine.context import WorkflowContext
from kflow._engine.engine import CANCELLED, RUNNING_AFTER, Engine
from kflow._engine.journal import SegmentEnded, Suspended

__all__ = ["CANCELLED", "RUNNING_AFTER", "Engine", "SegmentEnded", "Suspended", "WorkflowContext"]

"""Entity model, timestamps and the engine interface; the only package that knows an engine."""

from datastore.clock import ClockUnsafe, HybridLogicalClock
from datastore.engine import Checksum, Engine, EngineUnavailable, KeyRange
from datastore.model import Entity, EntityRef, InvalidEntity, Row
from datastore.registry import UnknownEngine, open_engine

__all__ = [
    "Checksum", "ClockUnsafe", "Engine", "EngineUnavailable", "Entity", "EntityRef", "HybridLogicalClock",
    "InvalidEntity", "KeyRange", "Row", "UnknownEngine", "open_engine",
]

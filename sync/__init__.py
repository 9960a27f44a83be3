"""ZooKeeper for nxnw: tree mirror (N1 -> N2), entity-group locks, the mode and migration-state znodes.

One recipe per module, each opening with what it does on session loss; see sync/README.md.
May import only ``datastore`` of our packages, and kazoo.
"""

from sync.lock import GroupLock, GroupLockError, GroupLockLost, GroupLockTimeout
from sync.mirror import MirrorError, TreeMirror, ephemeral_copies, next_sequence_suffix, purge_ephemeral_copies
from sync.mode import (MODES, InvalidModeData, ModeConflict, ModeState, ModeWatcher, ensure_mode, read_mode,
                       set_mode)
from sync.state import (PHASES, CorruptDocument, MigrationState, MigrationStateStore, StateConflict,
                        TaskRecordStore)

__all__ = [
    "MODES", "PHASES", "CorruptDocument", "GroupLock", "GroupLockError", "GroupLockLost", "GroupLockTimeout",
    "InvalidModeData", "MigrationState", "MigrationStateStore", "MirrorError", "ModeConflict", "ModeState",
    "ModeWatcher", "StateConflict", "TaskRecordStore", "TreeMirror", "ensure_mode", "ephemeral_copies",
    "next_sequence_suffix", "purge_ephemeral_copies", "read_mode", "set_mode",
]

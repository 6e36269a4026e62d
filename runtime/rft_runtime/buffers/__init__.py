"""Experience buffers: what the explorer hands the trainer, in one process or between two jobs.

`open_store` picks the store Trinity's storage type names (sql, queue, file); `Batcher` cuts groups of
experiences into train batches, through the replay pool (`ReplayPool`) when replay is on.
"""

from rft_runtime.buffers.batcher import Batcher
from rft_runtime.buffers.errors import StorageError
from rft_runtime.buffers.replay import PRIORITY_FNS, ReplayPool, priority_fn
from rft_runtime.buffers.stores import ExperienceStore, can_hold, default_path, open_store

__all__ = ["PRIORITY_FNS", "Batcher", "ExperienceStore", "ReplayPool", "StorageError", "can_hold", "default_path",
           "open_store", "priority_fn"]

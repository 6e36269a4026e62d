"""Tasksets: rows read through the `datasets` library, and the seeded, resumable stream of batches.

    from rft_runtime.data.tasksets import load_rows, TaskStream, Task, DataError

Importing this package is light; `datasets` is imported only when rows are loaded.
"""

from rft_runtime.data.errors import DataError

__all__ = ["DataError"]

"""Task families; importing this package registers them."""

from ptuning_v2.tasks import classification, generation, multiple_choice, ner, qa  # noqa: F401
from ptuning_v2.tasks.base import TASKS, Task, get_task, register_task

__all__ = ["TASKS", "Task", "get_task", "register_task"]

"""The progress bar of long CLI steps (``bcedge data prepare``, ``bcedge train``), in one place.

rich is imported when a bar is made, not when this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


def progress_bar(*, info: bool = False, transient: bool = True) -> Progress:
    """A rich progress bar on stderr: description, bar, done/total, time left.

    stderr, so stdout stays for the command's results (``--json`` output, summaries).

    Args:
        info: add a free-text column shown after the bar; every task must then be added with an
            ``info`` field (``add_task(..., info="")``) and may update it (``update(task, info=...)``).
        transient: remove the bar from the terminal when the ``with`` block ends.

    Returns:
        A :class:`rich.progress.Progress`, to be used as a context manager.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=Console(stderr=True), transient=transient)

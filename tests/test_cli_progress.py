"""bcedge.cli.progress: the one progress bar of the long CLI steps."""

from __future__ import annotations

import io

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from bcedge.cli.progress import progress_bar


def test_columns_console_and_transience() -> None:
    plain = progress_bar()
    kinds = [type(c) for c in plain.columns]
    assert kinds == [TextColumn, BarColumn, MofNCompleteColumn, TimeRemainingColumn]
    assert plain.console.stderr and plain.live.transient
    with_info = progress_bar(info=True, transient=False)
    assert [type(c) for c in with_info.columns] == [*kinds, TextColumn]
    assert with_info.columns[-1].text_format == "{task.fields[info]}"
    assert with_info.console.stderr and not with_info.live.transient


def test_info_field_is_drawn() -> None:
    bar = progress_bar(info=True)
    bar.console.file = io.StringIO()  # a recording file in place of stderr
    with bar:
        task = bar.add_task("epoch", total=4, info="")
        bar.update(task, completed=2, info="loss 0.1234")
        bar.console.print(bar.get_renderable())
    out = bar.console.file.getvalue()
    assert "epoch" in out and "2/4" in out and "loss 0.1234" in out

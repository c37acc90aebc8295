"""Writing outputs so that an interrupted run leaves the old file or the new one, never half.

Every file tfversky writes (masks, probability maps, models, JSON, CSV, figures, ``.npz``)
goes to a temporary name in its own folder and is renamed onto its name when complete
(``os.replace``, atomic on one file system). A kill, a full disk or an exception leaves the
target as it was; the temporary file is removed on an exception.

    with atomic_path("runs/demo/model.keras") as partial:
        model.save(partial)                  # any writer that takes a path
    atomic_write_text("runs/demo/results.json", json.dumps(results))

The temporary name keeps the target's whole name as its ending (``.partial-PID-model.keras``,
``.partial-PID-seg.nii.gz``), so writers that choose their format by the file ending
(Keras, nibabel, NumPy's ``.npz``, Matplotlib) write the same format.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid

PARTIAL_PREFIX = ".partial-"


def partial_name(path) -> pathlib.Path:
    """The temporary name of ``path`` while it is written: hidden, in the same folder, unique
    to this process and call, ending in ``path``'s own name.

    Example:

    >>> partial_name("out/seg.nii.gz").name.endswith("-seg.nii.gz")
    True
    """
    path = pathlib.Path(path)
    return path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; on success renames it onto ``path``.

    On an exception the temporary file (or folder) is removed and ``path`` is left as it
    was. The folder of ``path`` must exist.

    Args:
        path: The file to write.

    Yields:
        The ``pathlib.Path`` to write instead.

    Raises:
        Whatever the body raises; ``FileNotFoundError`` if the body wrote nothing.

    Example:

    >>> import tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as partial:
    ...     _ = partial.write_text("done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['a.txt'])
    """
    partial = partial_name(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


def atomic_write_text(path, text: str) -> None:
    """``pathlib.Path(path).write_text(text)``, atomically (``atomic_path``).

    Example:

    >>> import tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> atomic_write_text(target, "{}")
    >>> target.read_text()
    '{}'
    """
    with atomic_path(path) as partial:
        partial.write_text(text)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def csv_text(columns, tables) -> str:
    """CSV text of ``columns`` from tables of columns (dicts of sequences), row after row.

    Example:

    >>> csv_text(("a", "b"), [{"a": [1, 2], "b": [3, 4]}, {"a": [5], "b": [6]}])
    'a,b\\n1,3\\n2,4\\n5,6\\n'
    """
    import csv
    import io

    import numpy as np

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for table in tables:  # column by column: no Python object per lesion is kept
        writer.writerows(zip(*(np.asarray(table[k]).tolist() for k in columns)))
    return text.getvalue()

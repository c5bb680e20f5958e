"""Finding a dataset's files under the data root, downloading them when asked, and, when
they are missing, an error that says where we looked and how to provide them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from vgg.data.errors import DatasetNotFoundError


def find(folder: Path, pattern: str) -> Path | None:
    """The file `pattern` names in `folder`; "x(.gz)" means x or x.gz, preferring x."""
    plain = pattern.removesuffix("(.gz)")
    candidates = [plain, plain + ".gz"] if plain != pattern else [plain]
    return next((folder / c for c in candidates if (folder / c).is_file()), None)


def data_root_hint(layout: str) -> str:
    return f"pass the folder that holds {layout} as data root (--data_root)"


def require(title: str, folder: Path, patterns: Sequence[str], layout: str,
            download: Callable[[], object] | None, by_hand: str) -> list[Path]:
    """Paths of the files `patterns` name in `folder`. Missing ones are downloaded first when
    `download` is given (--download); otherwise, or if that fails (offline, say), a
    DatasetNotFoundError says where we looked and, after a failed download, what to fetch
    and where to put it (`by_hand`) rather than suggesting --download again."""
    found = [find(folder, p) for p in patterns]
    present = [f for f in found if f is not None]
    if len(present) == len(found):
        return present
    looked_for = ", ".join(str(folder / p) for p, f in zip(patterns, found, strict=True)
                           if f is None)
    if download is None:
        raise DatasetNotFoundError(f"{title} not found: looked for {looked_for}; "
                                   f"{data_root_hint(layout)}, or pass --download to fetch it")
    try:
        download()
    except Exception as error:  # no network, server down, bad checksum: all end up here
        raise DatasetNotFoundError(
            f"{title} not found: looked for {looked_for}, and the download failed "
            f"({type(error).__name__}: {error}). {by_hand}") from None
    found = [find(folder, p) for p in patterns]
    present = [f for f in found if f is not None]
    if len(present) < len(found):
        raise DatasetNotFoundError(f"{title}: the download did not provide {looked_for}. "
                                   f"{by_hand}")
    return present

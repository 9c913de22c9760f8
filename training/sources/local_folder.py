"""A folder of images someone already sorted: the query names the sub-folder (the label).

`search("snow_leopard", n)` walks `<root>/snow_leopard/` recursively; `search(".", n)` walks
the whole tree (for a folder that is one class). Candidates are file:// URLs, in sorted path
order so a run is reproducible, and are marked `curated`: a person chose the label.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from snowtrap.training.sources.base import FailureReason, ImageCandidate, SourceError

__all__ = ["IMAGE_SUFFIXES", "LocalFolder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")


class LocalFolder:
    """Images under `root/<query>`; licence and creator apply to the whole folder."""

    def __init__(
        self,
        root: Path | str,
        *,
        name: str = "local_folder",
        licence: str | None = None,
        licence_url: str | None = None,
        creator: str | None = None,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
    ) -> None:
        self.name = name
        self.root = Path(root).expanduser().resolve()
        self.licence = licence
        self.licence_url = licence_url
        self.creator = creator
        self.suffixes = tuple(suffix.lower() for suffix in suffixes)

    def search(self, query: str, limit: int) -> Iterator[ImageCandidate]:
        """Up to `limit` images under the sub-folder `query` ('.' or '' for all)."""
        folder = (self.root / query.strip()).resolve() if query.strip() else self.root
        if not folder.is_relative_to(self.root):
            raise SourceError(
                self.name, folder.as_uri(), FailureReason.BAD_URL, "query leaves the root folder"
            )
        if not folder.is_dir():
            raise SourceError(self.name, folder.as_uri(), FailureReason.NOT_FOUND, "no such folder")
        produced = 0
        for path in sorted(folder.rglob("*")):
            if produced >= limit:
                return
            if path.suffix.lower() not in self.suffixes or not path.is_file():
                continue
            relative = path.relative_to(self.root).as_posix()
            produced += 1
            yield ImageCandidate(
                url=path.resolve().as_uri(),
                source=self.name,
                query=query,
                licence=self.licence,
                licence_url=self.licence_url,
                creator=self.creator,
                title=relative,
                source_id=relative,
                curated=True,
            )

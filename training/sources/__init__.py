"""Image providers for the gather stage: one interface, one HTTP layer, five providers.

- `base`: `ImageSource` (the interface), `ImageCandidate`, `SourceError`;
- `http`: the shared client (timeouts, retries with backoff, 429 + Retry-After, auth errors);
- `bing`, `openverse`, `inaturalist`, `local_folder`, `coco_camera_traps`: the providers;
- `config`: their settings as they appear in a gather config (`ProviderConfig`);
- `testing`: a local HTTP server that replays provider responses (tests, offline demos).
"""

from snowtrap.training.sources.base import (
    BoxAnnotation,
    FailureReason,
    ImageCandidate,
    ImageSource,
    SourceAuthError,
    SourceError,
)
from snowtrap.training.sources.bing import BingImageSearchV7
from snowtrap.training.sources.coco_camera_traps import CocoCameraTraps
from snowtrap.training.sources.config import (
    BingConfig,
    CocoCameraTrapsConfig,
    INaturalistConfig,
    LocalFolderConfig,
    OpenverseConfig,
    ProviderConfig,
)
from snowtrap.training.sources.http import HttpClient, RetryPolicy, parse_retry_after
from snowtrap.training.sources.inaturalist import INaturalist
from snowtrap.training.sources.local_folder import LocalFolder
from snowtrap.training.sources.openverse import Openverse

__all__ = [
    "BingConfig",
    "BingImageSearchV7",
    "BoxAnnotation",
    "CocoCameraTraps",
    "CocoCameraTrapsConfig",
    "FailureReason",
    "HttpClient",
    "INaturalist",
    "INaturalistConfig",
    "ImageCandidate",
    "ImageSource",
    "LocalFolder",
    "LocalFolderConfig",
    "Openverse",
    "OpenverseConfig",
    "ProviderConfig",
    "RetryPolicy",
    "SourceAuthError",
    "SourceError",
    "parse_retry_after",
]

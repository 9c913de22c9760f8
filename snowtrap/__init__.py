"""snowtrap: real-time snow-leopard sightings from camera-trap photos.

One namespace, four layers: `snowtrap.models` (a model as an artifact), `snowtrap.training`
(the offline pipeline) and `snowtrap.stream` (the Kafka processors) live in the repository's
top-level folders `models/`, `training/` and `stream/`; this package holds the command. A
wheel maps those folders into `snowtrap/` (pyproject's package-dir), so nothing named
`models` or `stream` lands in site-packages. In a source checkout the folders sit beside this
one, and the package's search path includes the checkout's root so the same imports work.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (
    not (_Path(__file__).parent / "models").is_dir()
    and (_checkout / "models" / "__init__.py").is_file()
):
    __path__.append(str(_checkout))

"""snowtrap: real-time snow-leopard sightings from camera-trap photos."""

__version__ = "0.1.0"

"""The core layer: what every other layer may use and that imports nothing above it
(typed settings now; contracts, decoding and box geometry are the candidates to join)."""

"""The live sightings page (`snowtrap live`): detections, crops and identities, pushed live."""

"""The message contracts of the snowtrap topics: the one place that builds and parses them.

Every producer and consumer goes through this package, so a message either follows the
contract or is rejected here with a `ContractError` that says what is wrong. Kafka header
values are bytes; `headers` owns their encoding (UTF-8 text, ISO 8601 times, JSON boxes).

- `trap.images`      key = camera id, value = image bytes (or empty with a claim-check URI)
- `trap.detections`  key = image id, value = JSON detection record (MegaDetector image entry +)
- `trap.crops`       key = image id, value = JPEG bytes of one leopard crop, no EXIF
- `trap.deadletter`  key = source key, value = original bytes, headers = original + reason
- `trap.identities`  key = image id, value = JSON identity record of one crop (the matcher)

One module per topic (`images`, `detections`, `crops`, `deadletter`, `identities`), `headers`
for what they share, and `wire`: the wire format as pydantic models, from which the JSON
Schemas checked in beside this file (`*.schema.json`) are generated.
"""

from snowtrap.stream.contracts.crops import Crop, build_crop_message, parse_crop_message
from snowtrap.stream.contracts.deadletter import (
    DL_HEADERS,
    DeadLetter,
    build_deadletter_message,
    parse_deadletter_message,
)
from snowtrap.stream.contracts.detections import (
    DETECTION_CATEGORIES,
    LEOPARD_CATEGORY,
    Detection,
    DetectionRecord,
    build_detection_message,
    check_bbox,
    parse_detection_message,
)
from snowtrap.stream.contracts.headers import (
    CONTRACT_VERSION,
    ContractError,
    H,
    Headers,
    HeadersIn,
    headers_to_dict,
    image_id_of,
)
from snowtrap.stream.contracts.images import TrapImage, build_image_message, parse_image_message

__all__ = [
    "CONTRACT_VERSION",
    "DETECTION_CATEGORIES",
    "DL_HEADERS",
    "LEOPARD_CATEGORY",
    "ContractError",
    "Crop",
    "DeadLetter",
    "Detection",
    "DetectionRecord",
    "H",
    "Headers",
    "HeadersIn",
    "TrapImage",
    "build_crop_message",
    "build_deadletter_message",
    "build_detection_message",
    "build_image_message",
    "check_bbox",
    "headers_to_dict",
    "image_id_of",
    "parse_crop_message",
    "parse_deadletter_message",
    "parse_detection_message",
    "parse_image_message",
]

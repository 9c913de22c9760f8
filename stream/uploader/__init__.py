"""The camera-station uploader: an SD card's images into `trap.images`, each exactly once.

`snowtrap upload PATH... --camera-id ID --station-id ID` walks the folders in sorted order,
sniffs every file, and publishes the images with an idempotent kafka-python producer
(acks=all, key = camera id, so one camera's bursts stay in order on one partition).

What makes it safe to run again and again on the same card:

- location privacy: GPS is removed before an image leaves the station (`privacy`, setting
  `strip_gps`, on by default), losslessly: pixels, capture time and other tags stay; a file
  whose location cannot be removed is rejected by name;
- a local SQLite ledger (`stream.ledger`): each batch is noted as pending before it is sent
  and recorded once Kafka acknowledged it (batched transactions). A crash between the two,
  or a lost link, leaves pending rows; the next run reads the topic back from where that
  run wrote (`recovery`), keeps what Kafka has and sends only the rest: each image once;
- the image id is the sha256 of the bytes as sent, so a copy of an already-sent file under
  another name or folder is skipped too;
- files that are not images (no known signature), empty or unreadable are reported by name
  with the reason and skipped, never fatal. Files that look like images but are corrupt
  inside are sent: the worker decodes them properly and dead-letters them with a reason;
- images over the message limit travel as a claim-check URI (`file://` or `s3://`) with an
  empty value, so the broker never sees a record it would refuse.

Modules: `settings`, `files` (walk, sniff, read), `privacy` (GPS removal), `prepare` (one
file -> the image to send, timed per phase), `claim_checks`, `recovery` (settling a crashed
run), `producer` (`Uploader`), `outcomes` (per file, exit code), `summary` (the report),
`cli` (the command).

Exit codes: 0 done (rejected files included), 1 Kafka could not be reached at all (nothing
sent), 2 bad settings, 3 incomplete: some images were not acknowledged (link lost), re-run;
130 interrupted (Ctrl-C, SIGTERM) after recording the sends that were in flight.
"""

from snowtrap.stream.uploader.claim_checks import (
    ClaimCheckError,
    ClaimCheckStore,
    DirectoryStore,
    OwnPathStore,
    S3Store,
    claim_check_store_for,
)
from snowtrap.stream.uploader.cli import configure_cli, stop_on_sigterm
from snowtrap.stream.uploader.files import Candidate, find_files
from snowtrap.stream.uploader.outcomes import (
    EXIT_BAD_SETTINGS,
    EXIT_BROKER_UNREACHABLE,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BrokerUnreachableError,
    FileOutcome,
    UploadSummary,
)
from snowtrap.stream.uploader.producer import Uploader, close_producer, describe_error
from snowtrap.stream.uploader.settings import UploaderSettings
from snowtrap.stream.uploader.summary import print_summary

__all__ = [
    "EXIT_BAD_SETTINGS",
    "EXIT_BROKER_UNREACHABLE",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "BrokerUnreachableError",
    "Candidate",
    "ClaimCheckError",
    "ClaimCheckStore",
    "DirectoryStore",
    "FileOutcome",
    "OwnPathStore",
    "S3Store",
    "UploadSummary",
    "Uploader",
    "UploaderSettings",
    "claim_check_store_for",
    "close_producer",
    "configure_cli",
    "describe_error",
    "find_files",
    "print_summary",
    "stop_on_sigterm",
]

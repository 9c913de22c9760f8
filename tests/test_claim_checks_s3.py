"""`s3://` claim checks against a real S3-compatible server (moto's, on 127.0.0.1): the
uploader's store puts the image, the worker's reader gets it back from allowed buckets only,
never more than the limit plus one byte, and every failure maps to a dead-letter reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.object_store import S3Server, s3_server

from snowtrap.stream.contracts import image_id_of
from snowtrap.stream.object_store import S3Settings
from snowtrap.stream.uploader import ClaimCheckError as StoreError
from snowtrap.stream.uploader import S3Store, claim_check_store_for
from snowtrap.stream.worker.claim_check import (
    ClaimCheckError,
    S3ClaimChecks,
    read_claim_check,
    s3_claim_checks_for,
)

BUCKET = "trap-claims"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.create_bucket(BUCKET)
        server.create_bucket("someone-elses")
        yield server


def put_image(s3: S3Server, tmp_path: Path, data: bytes, prefix: str = "k2/2024") -> str:
    path = tmp_path / "IMG_0001.JPG"
    path.write_bytes(b"the file on the card is not what is stored")
    store = claim_check_store_for(f"s3://{BUCKET}/{prefix}", s3.settings)
    assert isinstance(store, S3Store)
    return store.put(path, data, image_id_of(data))


def reason_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ClaimCheckError) as caught:
        call()
    return caught.value.reason


def test_uploaded_claim_check_is_read_back_by_the_worker(s3: S3Server, tmp_path: Path):
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64
    uri = put_image(s3, tmp_path, data)
    assert uri == f"s3://{BUCKET}/k2/2024/{image_id_of(data)}.jpg"
    reader = s3_claim_checks_for([BUCKET], s3.settings)
    assert reader is not None
    # What was stored are the bytes given (the image as sent), not the file on the card.
    assert read_claim_check(uri, roots=(), max_bytes=len(data), s3=reader) == data
    # A second put of the same image is the same object.
    assert put_image(s3, tmp_path, data) == uri


def test_size_limit_holds_on_objects(s3: S3Server, tmp_path: Path):
    data = b"\xff\xd8\xff" + b"x" * 5000
    uri = put_image(s3, tmp_path, data, prefix="big")
    reader = S3ClaimChecks([BUCKET], s3.settings)
    assert read_claim_check(uri, (), max_bytes=len(data), s3=reader) == data
    assert reason_of(lambda: read_claim_check(uri, (), len(data) - 1, s3=reader)) == (
        "too_large_bytes"
    )


def test_refusals_map_to_dead_letter_reasons(s3: S3Server, tmp_path: Path):
    data = b"\xff\xd8\xff" + b"y" * 100
    uri = put_image(s3, tmp_path, data)
    reader = S3ClaimChecks([BUCKET, "no-such-bucket"], s3.settings)
    read = lambda uri: read_claim_check(uri, (), 10_000, s3=reader)  # noqa: E731
    # Allow-list: another bucket on the same server, and no buckets at all.
    other = uri.replace(BUCKET, "someone-elses")
    assert reason_of(lambda: read(other)) == "claim_check_forbidden"
    assert reason_of(lambda: read_claim_check(uri, (), 10_000, s3=None)) == (
        "claim_check_forbidden"
    )
    assert s3_claim_checks_for([], s3.settings) is None
    # Gone objects and buckets, and a URI without a key.
    assert reason_of(lambda: read(f"s3://{BUCKET}/k2/gone.jpg")) == "claim_check_missing"
    assert reason_of(lambda: read("s3://no-such-bucket/a.jpg")) == "claim_check_missing"
    assert reason_of(lambda: read(f"s3://{BUCKET}")) == "claim_check_missing"
    # A server that does not answer: unreadable (dead-lettered, replayable).
    dead = S3Settings(
        endpoint_url="http://127.0.0.1:9", region="eu-central-1", access_key_id="a",
        secret_access_key="b", connect_timeout_s=1, max_attempts=1,  # type: ignore[arg-type]
    )  # fmt: skip
    assert (
        reason_of(lambda: read_claim_check(uri, (), 10_000, s3=S3ClaimChecks([BUCKET], dead)))
        == "claim_check_unreadable"
    )


def test_uploader_store_errors_say_where(s3: S3Server, tmp_path: Path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff")
    store = claim_check_store_for("s3://no-such-bucket/p", s3.settings)
    with pytest.raises(StoreError, match="s3://no-such-bucket/p/"):
        store.put(path, b"\xff\xd8\xff", "0" * 64)
    with pytest.raises(StoreError, match="no bucket"):
        claim_check_store_for("s3:///prefix")

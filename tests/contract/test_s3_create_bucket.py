"""S3Store.create_bucket's answers that SeaweedFS does not give (it is tested on SeaweedFS in
tests/integration/test_cli_init.py): an existing bucket of yours is "exists already", a name
another account holds is a clear error."""

from __future__ import annotations

import pytest

from syncengine.errors import StoreRequestFailed

from .test_s3_store import FakeS3, fake, fake_store  # noqa: F401  (fake: a fixture)


async def test_a_bucket_you_own_already_is_not_an_error(fake: tuple[FakeS3, str]) -> None:  # noqa: F811
    server, ep = fake
    server.script = [("error", 409, "BucketAlreadyOwnedByYou", {})]
    async with fake_store(ep, region="eu-west-1") as store:
        assert await store.create_bucket() is False
    assert server.requests[0][:2] == ("PUT", "")


async def test_a_name_another_account_holds_is_refused_clearly(fake: tuple[FakeS3, str]) -> None:  # noqa: F811
    server, ep = fake
    server.script = [("error", 409, "BucketAlreadyExists", {})]
    async with fake_store(ep) as store:
        with pytest.raises(StoreRequestFailed, match="is taken"):
            await store.create_bucket()

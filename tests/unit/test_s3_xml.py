"""The XML escaping of keys and ETags in S3 request bodies (DeleteObjects,
CompleteMultipartUpload) is the standard library's, without importing it."""

from __future__ import annotations

from xml.sax.saxutils import escape

from hypothesis import given
from hypothesis import strategies as st

from syncengine.store.s3 import xml_escape


@given(st.text(alphabet=st.sampled_from("ab&<>;#\"' é\u2603"), max_size=40) | st.text(max_size=40))
def test_xml_escape_is_saxutils_escape(text: str) -> None:
    assert xml_escape(text) == escape(text)

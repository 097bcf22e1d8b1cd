"""Request bodies that no database column can hold are refused at the edge."""

import pytest

from lastro.core.openapi import parse_json
from lastro.core.problems import Problem


@pytest.mark.parametrize(
    "raw",
    [b'{"k":"\\ud800"}', b'{"k":"a\\u0000b"}', b'{"\\u0000":1}', b'[["x\\udc00"]]', b"{bad"],
)
def test_unstorable_or_malformed_json_is_a_400_problem(raw: bytes) -> None:
    with pytest.raises(Problem) as caught:
        parse_json(raw)
    assert caught.value.status == 400
    assert caught.value.slug == "malformed-json"


def test_ordinary_unicode_including_astral_characters_is_accepted() -> None:
    assert parse_json(b'{"name": "Jos\\u00e9 \\ud83d\\ude00"}') == {"name": "José 😀"}

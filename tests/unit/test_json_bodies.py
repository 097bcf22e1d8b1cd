"""Request bodies that no database column can hold are refused at the edge."""

import pytest

from lastro.core.openapi import parse_json
from lastro.core.problems import Problem


@pytest.mark.parametrize("raw", [b"{bad", b'{"k": tru}', b"\xff\xfe", b""])
def test_text_that_is_not_json_is_a_400_problem(raw: bytes) -> None:
    with pytest.raises(Problem) as caught:
        parse_json(raw)
    assert caught.value.status == 400
    assert caught.value.slug == "malformed-json"


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (
            b'{"k":"\\ud800"}',
            [{"field": "k", "detail": "must be valid Unicode (no lone surrogate escapes)"}],
        ),
        (b'{"k":"a\\u0000b"}', [{"field": "k", "detail": "must not contain NUL characters"}]),
        (
            b'{"meta":{"\\u0000":1}}',
            [{"field": "meta", "detail": "member names must not contain NUL characters"}],
        ),
        (
            b'{"entries":[{"d":"ok"},{"d":"x\\udc00"}],"n":"\\u0000"}',
            [
                {
                    "field": "entries[1].d",
                    "detail": "must be valid Unicode (no lone surrogate escapes)",
                },
                {"field": "n", "detail": "must not contain NUL characters"},
            ],
        ),
        (b'[["x\\u0000"]]', [{"field": "[0][0]", "detail": "must not contain NUL characters"}]),
    ],
)
def test_valid_json_holding_unstorable_text_is_a_422_naming_each_field(
    raw: bytes, errors: list[dict[str, str]]
) -> None:
    """It is JSON, so not "malformed"; its values break a rule, like any invalid field."""
    with pytest.raises(Problem) as caught:
        parse_json(raw)
    assert caught.value.status == 422
    assert caught.value.slug == "validation-error"
    assert caught.value.extra["errors"] == errors


def test_ordinary_unicode_including_astral_characters_is_accepted() -> None:
    assert parse_json(b'{"name": "Jos\\u00e9 \\ud83d\\ude00"}') == {"name": "José 😀"}

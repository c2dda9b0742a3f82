"""The comparison behind tests/integration/test_schema_definitions.py: whitespace is not
meaning, everything else is, and every kind of disagreement is named."""

from __future__ import annotations

from tests.schema_catalog import differences, normalize

BODY = ("CREATE OR REPLACE FUNCTION public.f()\n RETURNS integer\n LANGUAGE sql\n"
        "AS $function$\n    SELECT 1\n$function$\n")


def test_indentation_and_line_breaks_are_not_differences() -> None:
    reflowed = "CREATE OR REPLACE FUNCTION public.f() RETURNS integer LANGUAGE sql AS $function$ SELECT 1 $function$"
    assert normalize(BODY) == normalize(reflowed)
    assert differences({"function f()": BODY}, {"function f()": reflowed}) == []


def test_a_changed_body_is_reported_where_it_parts() -> None:
    found = differences({"function f()": BODY}, {"function f()": BODY.replace("SELECT 1", "SELECT 2")})
    assert len(found) == 1
    assert found[0].startswith("function f(): differs at character ")
    assert "SELECT 1" in found[0] and "SELECT 2" in found[0]


def test_a_changed_comment_inside_a_body_is_a_difference() -> None:
    # Comments in a body are stored with it: a file that says something else is stale.
    commented = BODY.replace("SELECT 1", "-- one\n    SELECT 1")
    assert differences({"function f()": commented}, {"function f()": commented.replace("one", "two")}) != []


def test_missing_and_extra_objects_are_named_on_their_side() -> None:
    found = differences({"function f()": BODY, "trigger jobs.t": "CREATE TRIGGER t"},
                        {"function f()": BODY, "function g()": BODY})
    assert found == ["function g(): made by migrations, not in schema.sql",
                     "trigger jobs.t: in schema.sql, not made by migrations"]


def test_a_prefix_is_not_equal() -> None:
    found = differences({"function f()": "SELECT 1"}, {"function f()": "SELECT 1 + 1"})
    assert found and "differs at character 8" in found[0]

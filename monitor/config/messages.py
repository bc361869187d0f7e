"""Validation errors rewritten as the one line a person reads: the field and the fix.

pydantic's own wording ("Input should be a valid list") names no fix; `format_validation_error`
turns the first error into a sentence naming the field by its TOML path and what to write.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from monitor.errors import fold

__all__ = ["format_validation_error"]


def format_validation_error(exc: ValidationError, origin: str, root: type[BaseModel]) -> str:
    """The first error as one line naming the field; a count of the others if any."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = _loc_text(first["loc"])
    if first["type"] == "extra_forbidden":
        known = _known_fields(root, first["loc"][:-1])
        close = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(known)
        message = f"{loc} is not a known setting ({hint})"
    elif first["type"] == "missing":
        message = f"{loc} is required"
    elif (sentence := _sentence(first, loc)) is not None:
        message = sentence
    else:
        # pydantic's `msg` never quotes the input, so a secret cannot leak through here
        msg = str(first["msg"]).removeprefix("Value error, ")
        message = msg if not loc or msg.startswith(loc) else f"{loc}: {msg}"
    others = len(errors) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return f"{origin}: {fold(message)}{more}"


# pydantic's own wording ("Input should be a valid list") names no fix; these say what to write.
# Never quote the input: a mistyped secret (api_key = 1234) must not reach the terminal.
_PATTERN_FIXES = {
    "name": "use letters, digits, '_', '.' and '-' only (no spaces), e.g. name = \"main\"",
    "prefix": "an MQTT topic prefix cannot hold the wildcards '#' or '+'",
}
_TYPE_FIXES = {
    "string_type": 'must be text: put the value in double quotes, e.g. {field} = "..."',
    "float_type": "must be a number without quotes, e.g. {field} = 5",
    "float_parsing": "must be a number without quotes, e.g. {field} = 5",
    "int_type": "must be a whole number without quotes, e.g. {field} = 8",
    "int_parsing": "must be a whole number without quotes, e.g. {field} = 8",
    "int_from_float": "must be a whole number, e.g. {field} = 8",
    "bool_type": "must be true or false (lowercase, no quotes)",
    "bool_parsing": "must be true or false (lowercase, no quotes)",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be {ge} or more",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be {le} or less",
    "literal_error": "must be {expected}",
    "model_type": "must be a table: write it as [{table}] on its own line, then its keys",
    "dict_type": "must be a table: write it as [{table}] on its own line, then its keys",
}


def _sentence(error: Mapping[str, Any], loc: str) -> str | None:
    """A sentence with the fix for pydantic's common error types, or None for its own."""
    kind = str(error["type"])
    names = [p for p in error["loc"] if isinstance(p, str)]
    field = names[-1] if names else ""
    table = ".".join(names)
    if kind == "list_type":
        return (
            f"{loc} must be a list of tables: write each entry as [[{table}]] with double "
            f"brackets (one [[{table}]] block per entry)"
        )
    if kind == "too_short" and table == "accounts":
        return (
            "accounts: no account to watch: add an [[accounts]] table with name and exchange "
            '(e.g. exchange = "binanceusdm"), or run without --config for the demo'
        )
    if kind == "string_pattern_mismatch":
        fix = _PATTERN_FIXES.get(field, f"does not match the pattern {error['ctx']['pattern']}")
        return f"{loc}: {fix}"
    template = _TYPE_FIXES.get(kind)
    if template is None:
        return None
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
    return f"{loc} " + template.format(field=field, table=table, **ctx)


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _known_fields(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the section at `loc` (for did-you-mean on a typo)."""
    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        nested = _model_of(field.annotation)
        if nested is None:
            return []
        model = nested
    return sorted(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None

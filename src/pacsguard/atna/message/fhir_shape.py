"""Typed reading of a FHIR R4 resource in its JSON representation (http://hl7.org/fhir/R4/json.html):
each element is read as the JSON type FHIR gives it (a primitive string, code or uri is a JSON
string, a boolean JSON true or false, a complex element a JSON object, an element of cardinality
..* a JSON array), and any other type is refused as ``not-fhir`` naming the element by its path
(``AuditEvent.agent[0].who``) and the JSON type found there. What fhir.parse reads it reads
through these, so that a wrong type is said in FHIR's terms, never as a Python exception's text.
"""

from __future__ import annotations

from typing import Any, Mapping

from pacsguard.atna.message.dicom_xml import AuditMessageError

#: The path every element of an AuditEvent is named from (FHIR R4 element paths, AuditEvent.x.y).
ROOT = "AuditEvent"


def json_type(value: Any) -> str:
    """The JSON type of a parsed value (RFC 8259 3) as a message names it, with its article: "a JSON
    null", "a JSON boolean", "a JSON int" (a whole number, as FHIR's integer is; the wording the
    reader has always used), "a JSON number", "a JSON string", "a JSON array", "a JSON object"."""
    if value is None:
        return "a JSON null"
    if isinstance(value, bool):  # before int: True is an int to Python, a boolean to JSON
        return "a JSON boolean"
    if isinstance(value, int):
        return "a JSON int"
    if isinstance(value, float):
        return "a JSON number"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, Mapping):
        return "a JSON object"
    return "a value of no JSON type"  # only from a caller passing Python objects, never from JSON


def wrong(path: str, value: Any, expected: str) -> AuditMessageError:
    """The not-fhir error for ``value`` at ``path`` where FHIR R4 has ``expected`` ("an object")."""
    return AuditMessageError("not-fhir", f"{path} is {json_type(value)}, not {expected}")


def text(element: Mapping[str, Any], key: str, path: str) -> str | None:
    """A FHIR string, code or uri (FHIR R4 2.24.0.1: a JSON string), None when absent (or null);
    not-fhir for any other JSON type, which would otherwise reach the record as is."""
    value = element.get(key)
    if value is None or isinstance(value, str):
        return value
    raise wrong(f"{path}.{key}", value, "a string")


def boolean(element: Mapping[str, Any], key: str, path: str) -> bool:
    """A FHIR boolean (FHIR R4 2.24.0.1: JSON true or false), False when absent; not-fhir for any
    other JSON type: the string "false" read as true would make the server agent the requesting user."""
    value = element.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise wrong(f"{path}.{key}", value, "a boolean")


def obj(element: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """A FHIR complex element (a JSON object, FHIR R4 json.html), {} when absent (or null, as a
    string's null is none); not-fhir for another JSON type."""
    value = element.get(key)
    if value is None:
        return {}
    return as_object(value, f"{path}.{key}")


def as_object(value: Any, path: str) -> Mapping[str, Any]:
    """``value``, the element at ``path``, as a JSON object; not-fhir for another JSON type."""
    if isinstance(value, Mapping):
        return value
    raise wrong(path, value, "an object")


def array(element: Mapping[str, Any], key: str, path: str) -> list[Any]:
    """An element of cardinality ..* (FHIR R4 json.html: a JSON array, even of one item), [] when
    absent; not-fhir for another JSON type, null too (json.html: "null" is no value of an element),
    as the reader has always refused one there."""
    if key not in element:
        return []
    value = element[key]
    if isinstance(value, list):
        return value
    raise wrong(f"{path}.{key}", value, "an array")


def items(element: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The items of an array of complex elements (`array`), each with its path (``path.key[n]``);
    not-fhir naming the first item that is no JSON object."""
    at = f"{path}.{key}"
    return [(f"{at}[{n}]", as_object(item, f"{at}[{n}]")) for n, item in enumerate(array(element, key, path))]

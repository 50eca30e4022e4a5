"""Validates real admin-API answers against the schemas of the OpenAPI
document the same server serves (JSON Schema 2020-12, as OpenAPI 3.1 uses).
Called by crates/cli/tests/openapi_answers.rs with one argument: a JSON file
`{"document": …, "calls": [{"method", "path", "status", "answer",
"expect_invalid"?}]}` (`path` is the documented path template). A success
status the document does not list is a failure; an error answer is checked
against the `default` (error) schema. Described objects are closed for
the check (see `strict`): every field of a real answer must be documented. Calls marked `expect_invalid` are
deliberately broken answers that must fail validation (the check can fail).
Prints one JSON line; exit status 1 on any failure."""

import json
import sys
from urllib.parse import quote

from jsonschema import Draft202012Validator

cases = json.load(open(sys.argv[1]))
doc = cases["document"]


def strict(node, in_all_of=False):
    """The document with every described object closed to unknown fields
    (except the parts of an `allOf`, which see each other's fields): the
    served document leaves them open (fields are added, never renamed), the
    test closes them so an answer field missing from the document fails."""
    if isinstance(node, list):
        return [strict(n, in_all_of) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v, k == "allOf") for k, v in node.items()}
    if "properties" in node and not in_all_of and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


doc = strict(doc)
failures = []
checked = 0


def pointer(*parts):
    return "#/" + "/".join(quote(p.replace("~", "~0").replace("/", "~1"), safe="~") for p in parts)


for call in cases["calls"]:
    what = f'{call["method"].upper()} {call["path"]} -> {call["status"]}'
    op = doc["paths"].get(call["path"], {}).get(call["method"])
    if op is None:
        failures.append(f"{what}: not in the document")
        continue
    status = str(call["status"])
    if status in op["responses"]:
        key = status
    elif call["status"] >= 400:
        key = "default"
    else:
        failures.append(f"{what}: success status not documented ({list(op['responses'])})")
        continue
    media = "application/json"
    if media not in op["responses"][key]["content"]:
        failures.append(f"{what}: no JSON schema")
        continue
    schema = dict(doc)
    schema["$ref"] = pointer("paths", call["path"], call["method"], "responses", key, "content", media, "schema")
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft202012Validator(schema).iter_errors(call["answer"])]
    checked += 1
    if call.get("expect_invalid"):
        if not errors:
            failures.append(f"{what}: a broken answer passed validation")
    elif errors:
        failures.append(f"{what}: {errors[:5]}")

print(json.dumps({"checked": checked, "failures": failures}))
sys.exit(1 if failures else 0)

#!/usr/bin/env python3
"""Generates the JSON Schema (draft 2020-12) that every enforcer audit record must satisfy.

    python3 tests/ocsf/generate.py --schema-repo PATH/TO/ocsf-schema [--out FILE]

PATH/TO/ocsf-schema is a git checkout of github.com/ocsf/ocsf-schema at the tag named by
OCSF_VERSION. The steps (README.md beside this file says why each is there):

1. compile the repository (dictionary.json, objects/, events/, profiles/, `extends`
   resolved) with the OCSF project's Python compiler, `python -m ocsf.compile`
   (ocsf-lib), and fix two things its 0.10.4 release gets wrong;
2. turn each class enforcer writes, with the profiles its records declare, into a JSON
   Schema with ocsf-json-schema (types, required attributes, enum values, ranges,
   patterns, `at_least_one` constraints, `additionalProperties: false`; `unmapped` is
   OCSF's free-form `object`);
3. check the result against the same JSON Schema made from the OCSF server's own export of
   that version, which ocsf-json-schema ships: two independent compilations must agree;
4. add enforcer's conventions (each marked `enforcer:` in the output) and write one file
   that picks the class's schema by `class_uid`.
"""

import argparse
import copy
import json
import pathlib
import subprocess
import sys

from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

OCSF_VERSION = "1.3.0"
# class name, class_uid, the profiles its records declare in `metadata.profiles`.
CLASSES = [
    ("network_activity", 4001, ["host", "security_control"]),
    ("event_log", 1008, ["host"]),
    ("application_lifecycle", 6002, ["host"]),
]
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / f"ocsf-{OCSF_VERSION}-enforcer.schema.json"


def strip_none(value):
    """ocsf-lib writes every absent key as null; the OCSF server leaves it out."""
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


def compile_repo(repo: pathlib.Path) -> dict:
    """The repository compiled as the OCSF server's `export/schema` has it."""
    extensions = sorted(p.name for p in (repo / "extensions").iterdir() if p.is_dir())
    out = subprocess.run(
        [sys.executable, "-m", "ocsf.compile", str(repo), "--ignore-extension", *extensions],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    schema = strip_none(json.loads(out))
    # ocsf-lib 0.10.4 never marks object references (its check reads `type[:-2] == "_t"`),
    # so an attribute of object type carries the object's name as its type. The server
    # writes `type: object_t, object_type: NAME`, which ocsf-json-schema reads.
    objects = set(schema["objects"])
    for group in ("classes", "objects"):
        for entity in schema[group].values():
            for attribute in entity.get("attributes", {}).values():
                if attribute.get("type") in objects:
                    attribute["object_type"] = attribute["type"]
                    attribute["type"] = "object_t"
    # ocsf-lib 0.10.4 lets a parent's `constraints` override the child's own (`device`
    # gets `_entity`'s at_least_one [name, uid]). OCSF takes the nearest definition: the
    # entity's own, else its parent's, and so on up `extends`.
    for group, folder in (("objects", "objects"), ("classes", "events")):
        raw = {}
        for path in (repo / folder).rglob("*.json"):
            data = json.loads(path.read_text())
            raw[data["name"]] = data
        for name, entity in schema[group].items():
            at, seen = raw.get(name), set()
            while at is not None and "constraints" not in at and at["name"] not in seen:
                seen.add(at["name"])
                at = raw.get(at.get("extends"))
            if at is not None and "constraints" in at:
                entity["constraints"] = at["constraints"]
            else:
                entity.pop("constraints", None)
    return schema


def sort_enums(value):
    """Enum lists in one order, so two generations compare equal."""
    if isinstance(value, dict):
        out = {k: sort_enums(v) for k, v in value.items()}
        if isinstance(out.get("enum"), list):
            out["enum"] = sorted(out["enum"], key=lambda v: (str(type(v)), v))
        return out
    if isinstance(value, list):
        return [sort_enums(v) for v in value]
    return value


def caption_rules(schema: dict, attributes: dict) -> None:
    """enforcer: every enum id written comes with its caption (the `sibling` OCSF names),
    and the caption is the one OCSF gives that value (99 Other: the source's own word)."""
    rules = []
    dependent = {}
    for name, attribute in attributes.items():
        sibling = attribute.get("sibling")
        enum = attribute.get("enum")
        properties = schema.get("properties", {})
        if not sibling or not enum or name not in properties or sibling not in properties:
            continue
        dependent[name] = [sibling]
        for value, item in sorted(enum.items(), key=lambda kv: int(kv[0])):
            if value == "99":
                continue
            rules.append(
                {
                    "if": {"properties": {name: {"const": int(value)}}, "required": [name]},
                    "then": {"properties": {sibling: {"const": item["caption"]}}},
                }
            )
    if dependent:
        schema["dependentRequired"] = dependent
    if rules:
        schema["allOf"] = schema.get("allOf", []) + rules


def class_schema(compiled: dict, name: str, profiles: list) -> dict:
    schema = sort_enums(OcsfJsonSchemaEmbedded(compiled).get_class_schema(name, profiles))
    # ocsf-json-schema collects the objects in a set: put them in one order.
    schema["$defs"] = dict(sorted(schema.get("$defs", {}).items()))
    caption_rules(schema, compiled["classes"][name]["attributes"])
    for slug, definition in schema.get("$defs", {}).items():
        caption_rules(definition, compiled["objects"][slug]["attributes"])
    # enforcer: the record declares exactly the profiles this schema was made with.
    schema["allOf"] = schema.get("allOf", []) + [
        {
            "$comment": "enforcer: metadata.profiles names the profiles of this schema",
            "properties": {
                "metadata": {
                    "required": ["profiles"],
                    "properties": {"profiles": {"const": sorted(profiles)}},
                }
            },
        }
    ]
    return schema


def git_commit(repo: pathlib.Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schema-repo", required=True, type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    repo = args.schema_repo.resolve()

    version = json.loads((repo / "version.json").read_text())["version"]
    if version != OCSF_VERSION:
        sys.exit(f"{repo} is OCSF {version}; check out the tag {OCSF_VERSION}")
    commit = git_commit(repo)
    compiled = compile_repo(repo)

    server = OcsfJsonSchemaEmbedded(get_ocsf_schema(OCSF_VERSION))
    defs = {
        "no_empty_strings": {
            "$comment": "enforcer: an unknown value is left out, never written as an empty "
            "string or null, anywhere in the record (unmapped included)",
            # Each keyword applies to its own type only, so a violation is reported at
            # the value's own path.
            "not": {"type": "null"},
            "minLength": 1,
            "items": {"$ref": "#/$defs/no_empty_strings"},
            "additionalProperties": {"$ref": "#/$defs/no_empty_strings"},
        }
    }
    dispatch = []
    for name, uid, profiles in CLASSES:
        ours = sort_enums(OcsfJsonSchemaEmbedded(compiled).get_class_schema(name, profiles))
        theirs = sort_enums(server.get_class_schema(name, profiles))
        if ours != theirs:
            sys.exit(
                f"{name}: the repository's compilation and the OCSF server's export of "
                f"{OCSF_VERSION} give different JSON Schemas"
            )
        defs[name] = class_schema(compiled, name, profiles)
        dispatch.append(
            {
                "if": {"properties": {"class_uid": {"const": uid}}, "required": ["class_uid"]},
                "then": {"$ref": f"#/$defs/{name}"},
            }
        )

    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"enforcer audit records, OCSF {OCSF_VERSION}",
        "x-generated": {
            "ocsf_version": OCSF_VERSION,
            "source": "https://github.com/ocsf/ocsf-schema",
            "source_tag": OCSF_VERSION,
            "source_commit": commit,
            "classes": {name: {"class_uid": uid, "profiles": p} for name, uid, p in CLASSES},
            "compiler": f"ocsf-lib {package_version('ocsf-lib')} (python -m ocsf.compile)",
            "json_schema": f"ocsf-json-schema {package_version('ocsf-json-schema')}",
            "cross_checked_with": f"the OCSF server's export of {OCSF_VERSION} shipped in "
            f"ocsf-json-schema {package_version('ocsf-json-schema')}",
            "command": "python3 tests/ocsf/generate.py --schema-repo PATH/TO/ocsf-schema "
            "(see tests/ocsf/README.md)",
        },
        "type": "object",
        "required": ["class_uid"],
        "properties": {"class_uid": {"enum": [uid for _, uid, _ in CLASSES]}},
        "allOf": [{"$ref": "#/$defs/no_empty_strings"}, *dispatch],
        "$defs": defs,
    }
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes) from ocsf-schema {OCSF_VERSION} at {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Check FHIR answers against the FHIR R4 resource models (`fhir.resources`, R4B).

Usage: scripts/fhir-conformance.py DIR

DIR holds the FHIR answers the HTTP API's tests received (one JSON file each), written
by their contract check when `PARCOURS_FHIR_SAMPLES=DIR` is set (see scripts/test). Each
is validated as its `resourceType` by the models of `fhir.resources` (R4B: FHIR R4 with
its technical corrections; `pip install fhir.resources`): an element R4 does not define,
a wrong type, a missing required element, a wrong cardinality fail (codes are not
checked against their value sets). A Bundle's entries are validated with it.
Exits 1 naming each file and what is wrong; 2 when DIR holds no answer (nothing checked
is not a pass).
"""
import json
import pathlib
import sys
from collections import Counter

try:
    from fhir.resources.R4B import get_fhir_model_class
except ImportError:
    sys.exit("fhir.resources is not installed: pip install 'fhir.resources==8.3.0'")


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    files = sorted(pathlib.Path(sys.argv[1]).glob("*.json"))
    if not files:
        print(f"no FHIR answer in {sys.argv[1]}: nothing was checked", file=sys.stderr)
        return 2
    kinds = Counter()
    failures = []
    for f in files:
        data = json.loads(f.read_text())
        rt = data.get("resourceType", "?")
        kinds[rt] += 1
        try:
            get_fhir_model_class(rt).model_validate(data)
        except Exception as e:  # pydantic's ValidationError, or an unknown resourceType
            failures.append(f"{f.name} ({rt}): {e}")
    print("checked:", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(files)} FHIR answers are not valid FHIR R4", file=sys.stderr)
        return 1
    print(f"{len(files)} FHIR answers valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())

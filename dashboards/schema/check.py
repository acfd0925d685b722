#!/usr/bin/env python3
"""Type-checks dashboard JSON files against Grafana's own dashboard types with `tsc`.

    python3 dashboards/schema/check.py dashboards/*.json

Grafana publishes its dashboard JSON model as TypeScript types generated from its CUE schema
(npm @grafana/schema, vendored here as dashboard.gen.d.ts). Each dashboard becomes
`const d: Dashboard = <the JSON>;` and TypeScript's compiler checks it: required fields,
field types, the allowed values of every enum, and -- since an object literal is checked for
excess properties -- any misspelt or unknown key at every level the schema types (dashboard,
panels, rows, gridPos, fieldConfig, thresholds, templating, links, annotations).

One transformation is applied to a temporary copy of the types: `declare enum` becomes the
union of its values (`enum ThresholdsMode { Absolute = "absolute" }` -> `"absolute"`) and a
reference to one member (`MappingType.ValueToText`) its value, because JSON carries enum
values, not TypeScript enum members. Numeric enums become unions of their
numbers, which is stricter than TypeScript's own numeric enums.

tsc comes from Debian's node-typescript (make test installs it). Exit 0 when every file
passes, 1 with tsc's messages otherwise.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ENUM = re.compile(r"export declare enum (\w+) \{([^}]*)\}", re.S)
MEMBER = re.compile(r"^\s*(\w+)\s*=\s*(\"[^\"]*\"|-?\d+)\s*,?\s*$")


def enums_to_unions(text):
    members = {}  # "Enum.Member" -> literal, for references such as `type: MappingType.ValueToText`

    def repl(m):
        values = []
        for line in m.group(2).splitlines():
            line = line.strip()
            if not line or line.startswith(("/**", "*", "*/")):
                continue
            mm = MEMBER.match(line)
            if not mm:
                raise SystemExit(f"unexpected enum member in {m.group(1)}: {line!r}")
            values.append(mm.group(2))
            members[f"{m.group(1)}.{mm.group(1)}"] = mm.group(2)
        if not values:
            raise SystemExit(f"enum {m.group(1)} has no members")
        return f"export type {m.group(1)} = {' | '.join(values)};"

    out, n = ENUM.subn(repl, text)
    if n == 0:
        raise SystemExit("no enums found: has the vendored file changed shape?")
    return re.sub(r"\b(\w+\.\w+)\b", lambda m: members.get(m.group(1), m.group(1)), out)


def main(paths):
    if not paths:
        raise SystemExit("usage: check.py DASHBOARD.json...")
    tsc = shutil.which("tsc")
    if not tsc:
        raise SystemExit("tsc not found: install Debian's node-typescript (make test-deps does)")
    with open(os.path.join(HERE, "dashboard.gen.d.ts"), encoding="utf-8") as f:
        types = enums_to_unions(f.read())
    with tempfile.TemporaryDirectory(prefix="stallwatch-schema-") as tmp:
        with open(os.path.join(tmp, "dashboard.gen.ts"), "w", encoding="utf-8") as f:
            f.write(types)
        files = []
        for i, p in enumerate(paths):
            with open(p, encoding="utf-8") as f:
                doc = json.load(f)
            ts = os.path.join(tmp, f"d{i}.ts")
            with open(ts, "w", encoding="utf-8") as f:
                f.write(f"// {p}\n")
                f.write('import type { Dashboard } from "./dashboard.gen";\n')
                f.write(f"export const d{i}: Dashboard = {json.dumps(doc, indent=1)};\n")
            files.append((ts, p))
        r = subprocess.run(
            [tsc, "--noEmit", "--strict", "--target", "es2020", "--lib", "es2020"]
            + [ts for ts, _ in files],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if r.returncode != 0:
            out = r.stdout + r.stderr
            for ts, p in files:
                out = out.replace(os.path.basename(ts), p)
            print(out, file=sys.stderr)
            sys.exit(1)
        print(f"{len(files)} dashboard(s) match Grafana's dashboard schema types")


if __name__ == "__main__":
    main(sys.argv[1:])

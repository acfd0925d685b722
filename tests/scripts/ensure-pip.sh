#!/usr/bin/env bash
# Installs the named PyPI requirements (pip specifiers such as 'moto[server]==5.1.*') that are
# not satisfied yet; does nothing (and needs no network) when all are. Idempotent, so
# `make test` can call it every time.
set -euo pipefail
PY=${PYTHON:-python3}
missing=()
for req in "$@"; do
    if ! "$PY" - "$req" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
from pip._vendor.packaging.requirements import Requirement  # pip vendors it; packaging may be absent
r = Requirement(sys.argv[1])
try:
    v = version(r.name)
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if r.specifier.contains(v, prereleases=True) else 1)
PYEOF
    then
        missing+=("$req")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing PyPI packages: ${missing[*]}" >&2
"$PY" -m pip install --quiet --disable-pip-version-check "${missing[@]}"

#!/usr/bin/env bash
# Validates the Linux desktop integration files in packaging/. Installs nothing: needs
# desktop-file-validate (desktop-file-utils) and appstreamcli (appstream) on PATH.
#
#   tools/check_packaging.sh
#
# Fails if desktop-file-validate prints anything (it reports hints, warnings and errors alike)
# or if `appstreamcli validate --pedantic` fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

for tool in desktop-file-validate appstreamcli; do
  command -v "$tool" >/dev/null || { echo "check_packaging.sh: $tool not found (apt-get install desktop-file-utils appstream)" >&2; exit 1; }
done

status=0
shopt -s nullglob
desktop=(packaging/*.desktop)
metainfo=(packaging/*.metainfo.xml)
if (( ${#desktop[@]} == 0 || ${#metainfo[@]} == 0 )); then
  echo "check_packaging.sh: no .desktop or .metainfo.xml file in packaging/" >&2
  exit 1
fi

echo "== desktop-file-validate ${desktop[*]}"
if ! out=$(desktop-file-validate "${desktop[@]}" 2>&1) || [[ -n "$out" ]]; then
  printf '%s\n' "$out"
  echo "FAIL: desktop-file-validate" >&2
  status=1
fi

echo "== appstreamcli validate --no-net --pedantic ${metainfo[*]}"
if ! appstreamcli validate --no-net --pedantic "${metainfo[@]}"; then
  echo "FAIL: appstreamcli validate" >&2
  status=1
fi

if (( status == 0 )); then echo "packaging files OK"; fi
exit "$status"

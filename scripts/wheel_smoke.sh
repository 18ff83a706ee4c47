#!/usr/bin/env bash
# The package installs anywhere: build the wheel, install it into a fresh venv outside the
# checkout, and from there (no checkout on sys.path) run what a new user runs first.
#
#   bash scripts/wheel_smoke.sh            # after scripts/setup.sh (CI runs it from .ci/run)
#
# Checks, in order: the wheel carries proto/summarizer.proto, the shipped configs and the server
# under pegasus_gsg/ and no other top-level name; `pegasus-gsg --help`; the demo's smoke mode
# (every stage on tiny slices of ../shared/data, its own server included); then the server
# started by `pegasus-gsg serve` on the demo's model answers one Summarize through
# `pegasus-gsg summarize`. The venv reuses pip's cache; versions come from requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DATA="$(cd "${PEGASUS_GSG_DATA:-../shared/data}" && pwd)"
WORK="$(mktemp -d /tmp/pegasus-gsg-wheel.XXXXXX)"
server_pid=""
cleanup() {
    rm -rf "$REPO/build"
    if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
started=$SECONDS
step() { echo "wheel_smoke: [$((SECONDS - started)) s] $*"; }

step "building the wheel"
rm -rf "$REPO/build"  # setuptools keeps build/lib between builds: a removed module would ship
"$REPO/.venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/dist" "$REPO" 2>&1 \
    | grep -v -e '^ ' -e '^!!' -e '^\*\*' -e '^$' || true
wheel=$(ls "$WORK"/dist/pegasus_gsg-*.whl)
"$REPO/.venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
need = ["pegasus_gsg/proto/summarizer.proto", "pegasus_gsg/configs/tiny.yaml",
        "pegasus_gsg/configs/demo_pretrain.yaml", "pegasus_gsg/server/__main__.py",
        "pegasus_gsg/py.typed"]
missing = [n for n in need if n not in names]
if tops != ["pegasus_gsg"] or missing:
    sys.exit(f"wheel_smoke: bad wheel: top-level names {tops} (want ['pegasus_gsg']), missing {missing}")
print(f"wheel_smoke: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, top level {tops}")
PY

step "installing it into a fresh venv in $WORK/venv"
python3 -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip install --quiet --constraint "$REPO/requirements.lock")
{ "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}" && "${PIP[@]}" "$wheel[ct2]"; } > "$WORK/pip.log" 2>&1 \
    || { grep -v '^WARNING: Location' "$WORK/pip.log" | tail -30; echo "wheel_smoke: install failed" >&2; exit 1; }

cd "$WORK"  # outside the checkout from here on
BIN="$WORK/venv/bin"
"$BIN/python" - <<'PY'
import pegasus_gsg, pegasus_gsg.server
assert "/venv/" in pegasus_gsg.__file__, pegasus_gsg.__file__
print("wheel_smoke: imported from", pegasus_gsg.__file__)
PY
step "pegasus-gsg --help"
"$BIN/pegasus-gsg" --help | head -3

step "pegasus-gsg demo --smoke"
"$BIN/pegasus-gsg" demo --smoke --data-dir "$DATA" --out "$WORK/demo" > "$WORK/demo.log" 2>&1 \
    || { tail -40 "$WORK/demo.log"; echo "wheel_smoke: the demo failed" >&2; exit 1; }
tail -4 "$WORK/demo.log"

step "pegasus-gsg serve + pegasus-gsg summarize"
port=$("$BIN/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$BIN/pegasus-gsg" serve --model "$WORK/demo/finetune/model" --host 127.0.0.1 --port "$port" \
    > "$WORK/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 120); do
    if "$BIN/python" -m pegasus_gsg.server.healthcheck --target "127.0.0.1:$port" > /dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then cat "$WORK/serve.log"; echo "wheel_smoke: the server exited" >&2; exit 1; fi
    sleep 1
done
summary=$("$BIN/pegasus-gsg" summarize --server "127.0.0.1:$port" \
    "The quarterly budget review moves to Friday at 10 am. Please send your figures by Thursday noon.")
echo "wheel_smoke: Summarize answered: ${summary:0:120}"
[ -n "$summary" ] || { echo "wheel_smoke: empty summary" >&2; exit 1; }
kill -TERM "$server_pid"
wait "$server_pid" || code=$?
server_pid=""
step "server stopped (exit ${code:-0}); the wheel works outside the checkout"

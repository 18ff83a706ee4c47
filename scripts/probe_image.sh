#!/usr/bin/env bash
# Probe the built server image as a user would run it: container from the image, its own
# ENTRYPOINT and CMD, a model directory mounted read-only at /model, host network on 127.0.0.1.
#
#   bash scripts/build_image.sh && bash scripts/probe_image.sh      # as root, after setup.sh
#
# Checks, in order:
# 1. a tiny random-weight model (made here with tests/_model_fixtures.py) mounted read-only:
#    health goes SERVING (asked from the host, and by the image's own HEALTHCHECK command run in
#    a second container); Summarize, SummarizeBatch (in order, the same summaries as one by one)
#    and SummarizeStream (deltas add up to Summarize's summary) answer through
#    pegasus_gsg.serving.client; the server process runs as uid 10001; SIGTERM (what `docker
#    stop` sends) while a long stream is being generated drains it: the stream finishes, and the
#    container exits with status 0 within --grace;
# 2. no model mounted (the empty /model volume) and a model directory uid 10001 cannot read:
#    the container exits non-zero, prints no traceback and exactly one error line, and health
#    never says SERVING.
# The server binds 127.0.0.1 only: the probe appends `--host 127.0.0.1 --port <free port>` after
# the image's CMD (the last flag wins), as `docker run IMAGE ...flags` would. The RPCs come from
# the checkout's .venv (PYTHON to override). Prints each check and the probe's time.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
IMAGE="${IMAGE:-pegasus-gsg-server}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
started=$SECONDS
step() { echo "probe_image: [$((SECONDS - started)) s] $*"; }
fail() { echo "probe_image: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { echo "scripts/probe_image.sh: run as root (buildah)" >&2; exit 2; }
command -v buildah > /dev/null || { echo "scripts/probe_image.sh: buildah is missing; run scripts/build_image.sh" >&2; exit 2; }
buildah inspect --type image "$IMAGE" > /dev/null 2>&1 \
    || { echo "scripts/probe_image.sh: no image $IMAGE; run scripts/build_image.sh" >&2; exit 2; }

WORK="$(mktemp -d /tmp/pegasus-gsg-probe.XXXXXX)"
chmod 755 "$WORK"
containers=()
run_pid=""
cleanup() {
    if [ -n "$run_pid" ]; then kill -KILL "$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true; fi
    for ctr in "${containers[@]}"; do buildah rm "$ctr" > /dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The image's config (docker format): ENTRYPOINT, CMD, HEALTHCHECK command, USER; one word a line.
buildah inspect --type image "$IMAGE" > "$WORK/image.json"
image_config() {
    "$PY" - "$WORK/image.json" "$1" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))["Docker"]["config"].get(sys.argv[2]) or []
if isinstance(value, dict):  # Healthcheck: {"Test": ["CMD", word, ...], ...}
    value = value.get("Test", [])[1:]
print("\n".join([value] if isinstance(value, str) else value))
PY
}
mapfile -t entrypoint < <(image_config Entrypoint)
mapfile -t cmd < <(image_config Cmd)
mapfile -t healthcheck < <(image_config Healthcheck)
user=$(image_config User)
[ "${#entrypoint[@]}" -gt 0 ] || fail "the image has no ENTRYPOINT"
step "image $IMAGE: user '$user', entrypoint ${entrypoint[*]} | cmd ${cmd[*]}"
# The --grace the container runs with: the last in ENTRYPOINT + CMD, else the server's 10 s.
grace=10
args=("${entrypoint[@]}" "${cmd[@]}")
for i in "${!args[@]}"; do
    if [ "${args[$i]}" = --grace ]; then grace=${args[$((i + 1))]}; fi
done

# RPCs and health polling from the host venv.
cat > "$WORK/rpc.py" <<'PY'
"""probe_image.sh's client side: `wait PORT PID`, `rpcs PORT`, `drain PORT PID FILE`,
`watch PORT PID`."""
import os, signal, sys, time
import grpc
from pegasus_gsg.serving.client import SummarizerClient

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"  # not a zombie

def status(client):
    try:
        return client.health(timeout=1)
    except grpc.RpcError as err:  # not listening yet (UNAVAILABLE), or gone
        return err.code().name

mode, port = sys.argv[1], sys.argv[2]
client = SummarizerClient(f"127.0.0.1:{port}", timeout=120, max_attempts=1)
if mode in ("wait", "watch"):
    pid, seen, t0 = int(sys.argv[3]), [], time.monotonic()
    while alive(pid) and time.monotonic() - t0 < 300:
        s = status(client)
        if not seen or seen[-1] != s:
            seen.append(s)
        if mode == "wait" and s == "SERVING":
            break
        time.sleep(0.2)
    print(f"{time.monotonic() - t0:.1f} s, health seen: {' -> '.join(seen)}")
    sys.exit(0 if (mode == "wait") == ("SERVING" in seen) else 1)
if mode == "drain":  # SIGTERM while a long stream is being generated; it must still finish
    pid, stamp_file, n = int(sys.argv[3]), sys.argv[4], 100
    t0 = time.monotonic()
    stream = client.summarize_stream("Drain test.", max_new_tokens=n, min_new_tokens=n)
    next(stream)  # generation has started
    os.kill(pid, signal.SIGTERM)
    signalled = time.monotonic() - t0
    open(stamp_file, "w").write(str(time.time()))
    rest = list(stream)
    final = rest[-1].final
    assert rest[-1].done and final.output_tokens == n, (rest[-1].done, final.output_tokens)
    print(f"SIGTERM {signalled:.2f} s into a {n}-token stream (generated in "
          f"{final.generate_seconds:.2f} s): {len(rest)} messages after it, the last done")
    assert final.queue_seconds + final.generate_seconds > signalled, "generation ended before SIGTERM"
    sys.exit(0)
texts = [
    "The quarterly budget review moves to Friday at 10 am. Please send your figures by Thursday noon.",
    "Heavy rain delayed the cocoa harvest in the west, and exporters expect lower shipments this month.",
    "The board approved the merger after talks with the minister; shares rose five percent on Monday.",
]
info = client.model_info()
one = [client.summarize(t) for t in texts]
batch = client.summarize_batch(texts)
stream = list(client.summarize_stream(texts[0]))
deltas = "".join(m.text_delta for m in stream)
print(f"GetModelInfo: {info.model_path} ({info.backend}, vocab {info.vocab_size}); Summarize: {one[0].summary[:60]!r} "
      f"({one[0].input_tokens} tokens in, {one[0].output_tokens} out)")
assert all(r.summary for r in one), [r.summary for r in one]
assert [r.summary for r in batch] == [r.summary for r in one], ([r.summary for r in batch], [r.summary for r in one])
print(f"SummarizeBatch: {len(batch)} summaries, in order, equal to Summarize's")
assert stream and stream[-1].done and stream[-1].final.summary == deltas == one[0].summary, (deltas, one[0].summary)
print(f"SummarizeStream: {len(stream)} messages, deltas add up to Summarize's summary")
PY

# The process the container runs: the deepest descendant of `buildah run` (chroot isolation
# shares the host's pid namespace, so it is visible here; `docker stop` signals it the same way).
server_pid_of() {
    local pid=$1 child
    while child=$(ps -o pid= --ppid "$pid" | head -1 | tr -d ' ') && [ -n "$child" ]; do pid=$child; done
    echo "$pid"
}

# start_container LOG [buildah run options...]: the image's entrypoint + cmd on a free port.
start_container() {
    local log=$1
    shift
    port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    ctr=$(buildah from --quiet "$IMAGE")
    containers+=("$ctr")
    # buildah 1.28 mounts an image VOLUME's own (empty) copy over a --volume at the same path,
    # where Docker and Podman let the user's mount win: with a mount, drop the declaration from
    # this container (not the image). Without one, /model is that empty copy, as with `docker run`.
    if [ $# -gt 0 ]; then buildah config --volume /model- "$ctr"; fi
    buildah run --network host "$@" "$ctr" -- "${entrypoint[@]}" "${cmd[@]}" \
        --host 127.0.0.1 --port "$port" > "$log" 2>&1 &
    run_pid=$!
}

step "making a tiny model (random weights, 1000-id tokenizer) in $WORK/model"
"$PY" - "$WORK/model" > "$WORK/model.log" 2>&1 <<'PY' || { cat "$WORK/model.log"; fail "could not make the model"; }
import sys, tempfile
from pegasus_gsg.data.tokenization import train_tokenizer
from tests._model_fixtures import build_model_dir
from tests.conftest import synthetic_texts
with tempfile.TemporaryDirectory() as tok:
    train_tokenizer(synthetic_texts(600), vocab_size=1000, out_dir=tok)
    build_model_dir(tok, sys.argv[1], d_model=32, layers=1, max_new_tokens=12,
                    max_position_embeddings=512)  # room for the drain check's 100-token stream
PY
chmod -R a+rX "$WORK/model"

step "1. serving: container with $WORK/model mounted read-only at /model"
start_container "$WORK/serve.log" --volume "$WORK/model:/model:ro"
"$PY" "$WORK/rpc.py" wait "$port" "$run_pid" \
    || { cat "$WORK/serve.log"; fail "health never said SERVING"; }
step "health SERVING on 127.0.0.1:$port"
server_pid=$(server_pid_of "$run_pid")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$server_pid/status")
step "server process $server_pid ($(tr '\0' ' ' < "/proc/$server_pid/cmdline" | cut -c1-60)...) uids (real eff saved fs): $uids"
[ "$uids" = "10001 10001 10001 10001" ] || fail "the server runs as uids $uids, not the image's user 10001"
if [ "${#healthcheck[@]}" -gt 0 ]; then
    hc_ctr=$(buildah from --quiet "$IMAGE")
    containers+=("$hc_ctr")
    hc=$(buildah run --network host "$hc_ctr" -- "${healthcheck[@]}" --target "127.0.0.1:$port" 2>&1) \
        || fail "the image's HEALTHCHECK command (${healthcheck[*]}) failed: $hc"
    step "the image's HEALTHCHECK command (${healthcheck[*]:0:3} ...) says: $hc"
else
    fail "the image has no HEALTHCHECK (built without --format docker?)"
fi
"$PY" "$WORK/rpc.py" rpcs "$port" || { cat "$WORK/serve.log"; fail "the RPCs failed"; }
"$PY" "$WORK/rpc.py" drain "$port" "$server_pid" "$WORK/term_at" \
    || { cat "$WORK/serve.log"; fail "the stream in flight at SIGTERM did not finish"; }
term_at=$(cat "$WORK/term_at")
code=0
wait "$run_pid" || code=$?
run_pid=""
took=$("$PY" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$term_at")
drain=$("$PY" - "$WORK/serve.log" <<'PY'
import sys
from datetime import datetime
stamps = {}
for line in open(sys.argv[1], encoding="utf-8"):
    for key in ("received SIGTERM", "pegasus_gsg.server.app: stopped"):
        if key in line:
            stamps[key] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
if len(stamps) == 2:
    print(f"{(stamps['pegasus_gsg.server.app: stopped'] - stamps['received SIGTERM']).total_seconds():.2f}")
PY
)
[ -n "$drain" ] || { cat "$WORK/serve.log"; fail "the server did not log 'received SIGTERM' and 'stopped'"; }
step "SIGTERM: the container exited with status $code after $took s (grace $grace s; the server's log: drained and stopped $drain s after the signal)"
[ "$code" = 0 ] || { cat "$WORK/serve.log"; fail "exit status $code after SIGTERM, want 0"; }
"$PY" -c "import sys; sys.exit(float(sys.argv[1]) >= float(sys.argv[2]))" "$took" "$grace" \
    || fail "the drain took $took s, more than the grace ($grace s)"

# expect_refusal NAME [buildah run options...]: exits non-zero, one error line, never SERVING.
expect_refusal() {
    local name=$1
    shift
    local log="$WORK/$name.log" code=0
    start_container "$log" "$@"
    watch=$("$PY" "$WORK/rpc.py" watch "$port" "$run_pid") || { cat "$log"; fail "$name: health said SERVING ($watch)"; }
    wait "$run_pid" || code=$?
    run_pid=""
    [ "$code" != 0 ] || { cat "$log"; fail "$name: the container exited 0"; }
    ! grep -q "Traceback" "$log" || { cat "$log"; fail "$name: the container printed a traceback"; }
    # The server's error lines: its log's ERROR level, or argparse's "PROG: error: ..." (not
    # buildah's own "Error: exit status N").
    mapfile -t errors < <(grep -E " ERROR |: error: " "$log")
    [ "${#errors[@]}" = 1 ] || { cat "$log"; fail "$name: ${#errors[@]} error lines, want exactly one"; }
    step "$name: exit status $code after $watch; its one error line: ${errors[0]}"
}

step "2. refusals"
expect_refusal "no-model-mounted"
mkdir "$WORK/locked"
cp -r "$WORK/model/." "$WORK/locked/"
chmod 700 "$WORK/locked"  # root's; the server runs as uid 10001
expect_refusal "unreadable-model-dir" --volume "$WORK/locked:/model:ro"
step "all checks passed in $((SECONDS - started)) s"

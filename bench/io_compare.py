#!/usr/bin/env python3
"""SwiftNIO's DatagramChannel against DatagramIO under the same benchmarks, alternating.

Each run starts `toudtls-bench serve --io IO` and runs against it, with the client on the same
layer: request/response with 1 and with 200 connections, and full handshakes at concurrency 1.
The order of the two layers alternates from run to run. CPU is user + sys per transaction (or
handshake) over the measured window: the client's from getrusage, the server's from /proc/PID/stat.
Prints every run as a JSON line, then per figure and layer the median and the range over runs.

  bench/io_compare.py --runs 5 [--bench .build/release/toudtls-bench] [--seconds 5] [--netns]

With --netns (root) every process runs in a fresh network namespace whose loopback has MTU 1500,
as bench/compare does.
"""
import argparse, json, os, signal, statistics, subprocess, sys, time

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bench", default=".build/release/toudtls-bench")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", default="rr,rr200,handshakes")
    parser.add_argument("--netns", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    prefix = []
    namespace = None
    if args.netns:
        namespace = f"dio-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "mtu", "1500", "up"], check=True)
        prefix = ["ip", "netns", "exec", namespace]
    results = {}
    try:
        for run in range(args.runs):
            order = ["nio", "native"] if run % 2 == 0 else ["native", "nio"]
            for io in order:
                for figure, value in one_run(args, prefix, io).items():
                    results.setdefault(figure, {}).setdefault(io, []).append(value)
    finally:
        if namespace:
            subprocess.run(["ip", "netns", "del", namespace])
    print("\nfigure | layer | median [min .. max] over runs")
    for figure in sorted(results):
        for io in ("nio", "native"):
            values = results[figure].get(io, [])
            if values:
                print(f"{figure} | {io} | {statistics.median(values):.2f} [{min(values):.2f} .. {max(values):.2f}] (n={len(values)})")

def one_run(args, prefix, io):
    serve = [*prefix, args.bench, "serve", "--io", io]
    if args.workers:
        serve += ["--workers", str(args.workers)]
    server = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    figures = {}
    try:
        hello = json.loads(server.stdout.readline())
        port, pid = str(hello["listening"]), str(hello["pid"])
        common = ["--io", io, "--port", port]
        only = args.only.split(",")
        for name, connections in (("rr", 1), ("rr200", 200)):
            if name not in only:
                continue
            out = run_json([*prefix, args.bench, "rr", *common, "--connections", str(connections),
                            "--seconds", str(args.seconds), "--warmup-seconds", "1", "--server-pid", pid])
            print(json.dumps({"io": io, "figure": name, **out}), flush=True)
            figures[f"{name}.transactions_per_s"] = out["transactions_per_s"]
            figures[f"{name}.p50_us"] = out["p50_us"]
            figures[f"{name}.client_cpu_us"] = out["client_user_us_per_transaction"] + out["client_sys_us_per_transaction"]
            figures[f"{name}.client_user_us"] = out["client_user_us_per_transaction"]
            figures[f"{name}.server_cpu_us"] = out["server_user_us_per_transaction"] + out["server_sys_us_per_transaction"]
            figures[f"{name}.server_user_us"] = out["server_user_us_per_transaction"]
        if "handshakes" in only:
            out = run_json([*prefix, args.bench, "handshakes", *common, "--concurrency", "1",
                            "--seconds", str(args.seconds), "--server-pid", pid])
            print(json.dumps({"io": io, "figure": "handshakes", **out}), flush=True)
            for key, value in out.items():
                if isinstance(value, (int, float)) and ("per_s" in key or "cpu_us" in key):
                    figures[f"handshakes.{key}"] = value
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    return figures

def run_json(command):
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])

if __name__ == "__main__":
    main()

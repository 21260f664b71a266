#!/usr/bin/env python3
"""Soak test of a running `famix serve`: N clients post one PNG in a loop for S seconds.

Reports requests/s, the statuses, p50/p99/p999 latency and the server's resident memory
(RSS, from /proc/PID/status) over time, as one JSON object on stdout. Fails (exit 1) when
a request fails other than by 503 back-pressure, or when the RSS grows faster than
--max-rss-slope MB per minute after the warm-up (a least-squares line through the RSS
samples taken after --warmup seconds).

Standard library only, so any Python 3 runs it (the tools venv does):

    famix serve --checkpoint CKPT --port 8080 &
    python3 tools/soak.py --url http://127.0.0.1:8080 --pid $! --clients 8 --seconds 1800
"""

import argparse
import http.client
import json
import struct
import sys
import threading
import time
import urllib.parse
import zlib


def png(width, height):
    """A deterministic RGB PNG (a gradient with a little texture), stdlib only."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes(((x * 255) // width, (y * 255) // height, ((x * 7 + y * 13) % 64) + 96))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b"")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_per_minute(samples):
    """Least-squares slope (MB per minute) of [(seconds, MB), ...]."""
    n = len(samples)
    if n < 3:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    cov = sum((t - mt) * (v - mv) for t, v in samples)
    return 60.0 * cov / var if var > 0 else 0.0


def client(url, body, headers, stop, out):
    """Posts `body` until `stop` is set; appends (status or error text, seconds) to `out`."""
    u = urllib.parse.urlsplit(url)
    conn = None
    while not stop.is_set():
        t = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            conn.request("POST", "/v1/segment?output=json", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            out.append((r.status, time.perf_counter() - t))
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            out.append((f"{type(e).__name__}: {e}", time.perf_counter() - t))
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
    if conn is not None:
        conn.close()


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (for its RSS)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="128x96", help="posted image WxH")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the RSS slope counts (default: a third of the run)")
    ap.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    ap.add_argument("--max-rss-slope", type=float, default=None, help="fail above this RSS growth after warm-up, MB/min")
    ap.add_argument("--api-key", default=None)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    body = png(w, h)
    headers = {"Content-Type": "image/png"}
    if a.api_key:
        headers["Authorization"] = f"Bearer {a.api_key}"
    warmup = a.seconds / 3 if a.warmup is None else a.warmup
    stop = threading.Event()
    results = [[] for _ in range(a.clients)]
    threads = [threading.Thread(target=client, args=(a.url, body, headers, stop, results[i]), daemon=True) for i in range(a.clients)]
    t0 = time.monotonic()
    rss = [(0.0, rss_mb(a.pid))]
    for t in threads:
        t.start()
    while (elapsed := time.monotonic() - t0) < a.seconds:
        time.sleep(min(a.sample, max(0.0, a.seconds - elapsed)))
        rss.append((round(time.monotonic() - t0, 2), round(rss_mb(a.pid), 1)))
    stop.set()
    for t in threads:
        t.join(timeout=70)
    wall = time.monotonic() - t0
    flat = [r for rs in results for r in rs]
    statuses = {}
    for s, _ in flat:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = sorted(d for s, d in flat if s == 200)
    failed = sum(n for s, n in statuses.items() if s not in ("200", "503"))
    after = [(t, v) for t, v in rss if t >= warmup]
    slope = slope_per_minute(after)
    report = {
        "url": a.url,
        "clients": a.clients,
        "seconds": round(wall, 1),
        "image": a.size,
        "requests": len(flat),
        "requests_per_s": round(len(flat) / wall, 2),
        "statuses": statuses,
        "failed": failed,
        "latency_ms": {q: (round(1e3 * v, 1) if v is not None else None)
                       for q, v in (("p50", percentile(ok, 0.5)), ("p99", percentile(ok, 0.99)), ("p999", percentile(ok, 0.999)))},
        "rss_mb": {"start": rss[0][1], "after_warmup": after[0][1] if after else None, "end": rss[-1][1],
                   "max": max(v for _, v in rss), "slope_mb_per_min_after_warmup": round(slope, 3), "warmup_s": warmup},
        "rss_samples": rss,
        "max_rss_slope": a.max_rss_slope,
    }
    print(json.dumps(report))
    problems = []
    if failed:
        problems.append(f"{failed} requests failed: {statuses}")
    if not ok:
        problems.append("no request succeeded")
    if a.max_rss_slope is not None and slope > a.max_rss_slope:
        problems.append(f"RSS grew {slope:.2f} MB/min after warm-up (bound {a.max_rss_slope})")
    for p in problems:
        print(f"soak: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

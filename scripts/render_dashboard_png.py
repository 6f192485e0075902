"""Render the tierserve Grafana dashboard's panels to one PNG, from a live Prometheus.

Grafana is not in the package registries this project can use, so this runs the dashboard's own
panel queries (`charts/tierserve/files/tierserve-dashboard.json`, variables set to "All") through
Prometheus' HTTP API (`/api/v1/query_range`) and draws each panel's series with matplotlib, in the
dashboard's order, with its title, legend format and unit.

    python scripts/render_dashboard_png.py --prometheus http://127.0.0.1:9090 \\
        --minutes 10 --out docs/img/dashboard.png

Exit code 1 (and the panels named) when any query returned no data.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "tierserve" / "files" / "tierserve-dashboard.json"
UNIT_LABEL = {"reqps": "req/s", "percentunit": "share", "s": "seconds", "currencyUSD": "USD",
              "none": ""}


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{qs}", timeout=30) as resp:
        body = json.loads(resp.read().decode())
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed: {body}")
    return body["data"]["result"]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: `{{label}}` replaced by the series' label value."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return text or json.dumps(labels)


def collect(url: str, dashboard: dict[str, Any], minutes: float,
            step: float) -> list[dict[str, Any]]:
    """Per panel: title, unit, and its series [(legend, [t], [v])] over the last `minutes`."""
    from tierserve.serving.dashboard import panel_queries

    end = time.time()
    start = end - minutes * 60
    queries = panel_queries(dashboard, rate_interval=f"{max(4 * step, 60):.0f}s")
    units = {p["title"]: p["fieldConfig"]["defaults"].get("unit", "") for p in dashboard["panels"]}
    panels: dict[str, dict[str, Any]] = {}
    for title, fmt, expr in queries:
        panel = panels.setdefault(title, {"title": title, "unit": units[title], "series": [],
                                          "empty": []})
        result = query_range(url, expr, start, end, step)
        if not result:
            panel["empty"].append(expr)
        for series in result:
            ts = [float(t) - end for t, _ in series["values"]]
            vs = [float(v) for _, v in series["values"]]
            panel["series"].append((legend(fmt, series["metric"]), ts, vs))
    return list(panels.values())


def draw(panels: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.1 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for name, ts, vs in panel["series"]:
            ax.plot([t / 60 for t in ts], vs, label=name, linewidth=1.6)
        ax.set_title(panel["title"], fontsize=11, loc="left")
        ax.set_ylabel(UNIT_LABEL.get(panel["unit"], panel["unit"]), fontsize=9)
        ax.set_xlabel("minutes before now", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if panel["series"]:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--out", default="docs/img/dashboard.png")
    parser.add_argument("--minutes", type=float, default=10.0, help="time window to draw")
    parser.add_argument("--step", type=float, default=2.0, help="query_range step, seconds")
    parser.add_argument("--dashboard", default=str(DASHBOARD))
    parser.add_argument("--title", default="tierserve dashboard (panels rendered from Prometheus)")
    args = parser.parse_args(argv)
    dashboard = json.loads(Path(args.dashboard).read_text())
    panels = collect(args.prometheus.rstrip("/"), dashboard, args.minutes, args.step)
    draw(panels, Path(args.out), args.title)
    print(args.out)
    empty = [(p["title"], e) for p in panels for e in p["empty"]]
    for title, expr in empty:
        print(f"no data: {title}: {expr}", file=sys.stderr)
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())

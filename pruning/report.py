"""Human-readable views of `report.json`: a terminal summary and an HTML page with PNG charts."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .report_model import PruningReport

__all__ = ["load_report", "load_report_model", "summary_table", "write_html"]


def load_report_model(uri: str | Path) -> PruningReport:
    """report.json (or its directory) at a path or URI, validated as a `PruningReport`."""
    from .storage import resolve

    path = resolve(uri)
    if path.is_dir():
        path = path / "report.json"
    return PruningReport.read(json.loads(path.read_text()))


def load_report(uri: str | Path) -> dict:
    """The same, as the strict-JSON dict the job wrote (for views that render every key)."""
    return load_report_model(uri).to_doc()


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_table(report: dict) -> str:
    """The gate table and headline numbers, rendered with rich to plain text."""
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=110, force_terminal=False, file=io.StringIO())
    plan = report.get("plan", {})
    enc = plan.get("encoder", {})
    console.print(f"[b]{report.get('name', '')}[/b] task={report.get('task')} "
                  f"status={report.get('status')} deployable={report.get('deployable')}")
    if enc:
        console.print(f"encoder FLOPs removed {enc['flops_removed_fraction']:.3f}, params removed "
                      f"{enc['params_removed_fraction']:.3f}; whole-model params removed "
                      f"{plan['whole']['params_removed_fraction']:.3f}")
    lat = report.get("latency") or {}
    if lat:
        console.print(f"latency p50 @ batch {lat['batch']} x {lat['seq_len']}: full "
                      f"{lat['full_p50_s'] * 1e3:.1f} ms, pruned {lat['pruned_p50_s'] * 1e3:.1f} ms "
                      f"(ratio {lat['ratio']:.3f})")
    rt = report.get("runtime") or {}
    if rt:
        version = rt.get(rt.get("name", ""), "")
        console.print(f"runtime {rt.get('name')} {version} ({rt.get('provider') or 'cpu'}, "
                      f"{rt.get('threads')} threads): latency, quality and gates measured on it")
    t = Table(title="quality", show_lines=False)
    for col in ("metric", "full", "pruned", "kept"):
        t.add_column(col)
    m = report.get("metrics", {})
    for k, v in m.get("pruned", {}).items():
        t.add_row(k, _fmt(m["full"].get(k)), _fmt(v), _fmt(m.get("quality_kept", {}).get(k)))
    console.print(t)
    g = Table(title="gates")
    for col in ("gate", "value", "threshold", "result"):
        g.add_column(col)
    for gate in report.get("gates", []):
        g.add_row(gate["name"], _fmt(gate["value"]), f"{gate['comparison']} {_fmt(gate['threshold'])}",
                  "PASS" if gate["passed"] else "FAIL")
    console.print(g)
    for point in report.get("search", []):
        console.print(f"search: target {point['target']:.3f} -> "
                      f"{'pass' if point['passed'] else 'fail'} {point.get('failed_gates', '')}")
    return console.export_text()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _charts(report: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    plan = report.get("plan")
    if plan:
        fig, ax = plt.subplots(1, 2, figsize=(9, 2.6))
        for a, key, title in ((ax[0], "heads_per_layer", "heads kept"),
                              (ax[1], "neurons_per_layer", "FFN neurons kept")):
            a.imshow([plan[key]], aspect="auto", cmap="viridis")
            a.set_title(title)
            a.set_yticks([])
            a.set_xlabel("layer")
            for i, v in enumerate(plan[key]):
                a.text(i, 0, str(v), ha="center", va="center", color="w")
        out.append(("Structure kept per layer", _png(fig)))
        plt.close(fig)
    trace = [p for p in report.get("search", []) if "metrics" in p]
    gates = [g for g in report.get("gates", []) if g["slice"] is None and g["comparison"] == ">="
             and g["threshold"] is not None]
    if trace and gates:
        metric = gates[0]["metric"]
        fig, ax = plt.subplots(figsize=(5, 3))
        pts = sorted((p["target"], p["metrics"].get(metric)) for p in trace)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"pruned {metric}")
        ax.axhline(gates[0]["threshold"], color="r", ls="--", label="gate")
        ax.set_xlabel("budget (fraction removed)")
        ax.legend()
        out.append(("Quality vs budget", _png(fig)))
        plt.close(fig)
    out += _distill_chart(plt, report)
    slices = report.get("slices", {})
    if slices.get("pruned"):
        metric = next(iter(report["metrics"]["full"]))
        names = sorted(slices["pruned"])
        fig, ax = plt.subplots(figsize=(7, 3))
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [slices["full"][n][metric] for n in names], 0.4, label="full")
        ax.bar([x + 0.2 for x in xs], [slices["pruned"][n][metric] for n in names], 0.4,
               label="pruned")
        ax.set_xticks(list(xs), names, rotation=30)
        ax.set_ylabel(metric)
        ax.legend()
        out.append((f"{metric} per slice", _png(fig)))
        plt.close(fig)
    return out


def _distill_chart(plt, report: dict) -> list[tuple[str, str]]:
    """Validation agreement (and loss) vs distillation steps, best step marked (engineer A)."""
    d = report.get("distillation") or {}
    pts = [p for p in d.get("curve") or [] if p.get("val_agreement") is not None]
    if not pts:
        return []
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([p["step"] for p in pts], [p["val_agreement"] for p in pts], "o-",
            label="validation agreement with full")
    ax.axvline(d.get("best_step", 0), color="g", ls=":", label="best (kept)")
    ax.set_xlabel("distillation step")
    ax.set_ylabel("agreement")
    loss = [(p["step"], p["loss"]) for p in pts if isinstance(p.get("loss"), float)]
    if loss:
        ax2 = ax.twinx()
        ax2.plot(*zip(*loss, strict=True), color="gray", alpha=0.5, label="loss")
        ax2.set_ylabel("loss")
    ax.legend(loc="lower right")
    png = _png(fig)
    plt.close(fig)
    return [("Quality vs distillation steps", png)]


def write_html(report: dict, path: str | Path) -> None:
    """report.html: the summary as text plus embedded PNG charts (no external assets)."""
    body = [f"<h1>tierserve pruning report: {html.escape(str(report.get('name', '')))}</h1>",
            f"<pre>{html.escape(summary_table(report))}</pre>"]
    try:
        charts = _charts(report)
    except ImportError:
        charts = []
        body.append("<p>Install matplotlib (extra [report]) for charts.</p>")
    for title, png in charts:
        body.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{png}'/>")
    Path(path).write_text("<!doctype html><meta charset='utf-8'><title>tierserve report</title>"
                          + "\n".join(body))

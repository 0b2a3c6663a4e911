"""Turns the raw samples of bench/run into the JSON document, the markdown
table and the PNG chart.

Each throughput, latency and rate figure is the best of the rounds (max for
higher-is-better, min for lower-is-better): on a shared, noisy machine
interference only ever makes a system look worse, so the best round is the
closest to what it can do. CPU per GB is the exception: it is the median of
the valid rounds. Busy time comes from /proc/stat's idle clock, and in this
VM that clock sometimes jumps ahead of the wall clock (the guest was paused),
which makes a round look cheaper than it was, down to an impossible 0. So a
round's CPU sample of 0 is dropped as invalid and the median resists one
such outlier where the minimum would report it. The median and every sample
are kept in the JSON for judging the noise.

`python3 bench/report.py FILE.json [--publish]` re-renders a saved run
(markdown, chart, and the README/docs tables) from its samples.
"""

import json
import os
import statistics

from workloads import FIGURES

MARK_BEGIN, MARK_END = "<!-- bench:begin -->", "<!-- bench:end -->"


CPU_UNIT = "CPU-s/GB"


def _aggregate(samples, better, unit):
    """(value, valid samples): see the module docstring for the rule."""
    if unit == CPU_UNIT:
        valid = [v for v in samples if v > 0]
        return (statistics.median(valid) if valid else None), valid
    return (max(samples) if better == "higher" else min(samples)), samples


def _row(samples, better, unit):
    value, valid = _aggregate(samples, better, unit)
    row = {"value": value, "median": statistics.median(samples), "samples": samples}
    if len(valid) < len(samples):
        row["invalid_samples"] = len(samples) - len(valid)
    if value is None:
        row["na"] = "no valid sample"
    return row


def _add_ratios(rows, direct):
    base = rows.get(direct, {}).get("value") if direct else None
    for row in rows.values():
        row.pop("ratio", None)
        if row["value"] is not None and base:
            row["ratio"] = row["value"] / base


def build(meta, systems, results, failures, extras):
    labels = {s.name: s.label for s in systems}
    figures = {}
    for fig, (title, unit, better, kind) in FIGURES.items():
        members = [s for s in systems if kind in s.kinds]
        if not any(s.name in results.get(fig, {}) or s.name in failures.get(fig, {}) for s in members):
            continue  # workload not run
        direct = next((s.name for s in members if s.name.startswith("direct")), None)
        rows = {}
        for s in members:
            samples = results.get(fig, {}).get(s.name)
            if samples:
                rows[s.name] = _row(samples, better, unit)
                if s.name in failures.get(fig, {}):  # some rounds failed: say so
                    rows[s.name]["failed_rounds"] = failures[fig][s.name]
            else:
                rows[s.name] = {"value": None,
                                "na": failures.get(fig, {}).get(s.name, ["not measured"])[-1]}
        _add_ratios(rows, direct)
        figures[fig] = {"title": title, "unit": unit, "better": better, "baseline": direct, "results": rows}
    doc = {"meta": meta, "systems": labels, "figures": figures, "extras": extras}
    doc["targets"] = targets(figures)
    return doc


def _value(figures, fig, system):
    return figures.get(fig, {}).get("results", {}).get(system, {}).get("value")


def targets(figures):
    """The datapath targets of issue 2, evaluated on this run's figures."""
    out = []

    def ratio(name, fig, a, b, goal, higher):
        va, vb = _value(figures, fig, a), _value(figures, fig, b)
        if va is None or vb is None or vb == 0:
            out.append({"target": name, "value": None, "goal": goal, "pass": None})
            return
        r = va / vb
        out.append({"target": name, "value": r, "goal": goal, "pass": r >= goal if higher else r <= goal})

    for fig, streams in (("bulk_1", "1 stream"), ("bulk_4", "4 streams")):
        ratio(f"sockmap / splice bulk, {streams}", fig, "shunt-sockmap", "shunt-splice", 1.0, True)
        ratio(f"sockmap / HAProxy bulk, {streams}", fig, "shunt-sockmap", "haproxy", 1.5, True)
    for fig, what in (("cpu_gb_1", "unpaced"), ("cpu_gb_paced", "fixed rate")):
        ratio(f"sockmap / splice CPU per GB, {what}", fig, "shunt-sockmap", "shunt-splice", 1.0, False)
    d, s, c = (_value(figures, "rr_p50", n) for n in ("direct", "shunt-sockmap", "shunt-copy"))
    if None in (d, s, c) or c - d <= 0:
        out.append({"target": "sockmap / copy added p50 latency", "value": None, "goal": 0.5, "pass": None})
    else:
        r = (s - d) / (c - d)
        out.append({"target": "sockmap / copy added p50 latency", "value": r, "goal": 0.5, "pass": r <= 0.5})
    return out


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit in ("conn/s", "req/s"):
        return f"{v:,.0f}"
    if unit == "CPU-s/GB":
        return f"{v:.3f}"
    return f"{v:.1f}"


def markdown(doc):
    m = doc["meta"]
    lines = [f"Run {m['date']} · kernel {m['kernel']} · {m['cpu']} × {m['cores']} · "
             f"topology {m['topology']} · profile {m['profile']['name']} "
             f"({m['profile']['rounds']} rounds) · background load "
             f"{', '.join(f'{b:.2f}' for b in m['background_cores_busy'])} cores busy"]
    if m.get("stand_in"):
        lines.append(f"\n**Harness test: shunt columns are a {m['stand_in']} stand-in, not shunt.**")
    notes = []

    def table(figs):
        figs = [f for f in figs if f in doc["figures"]]
        if not figs:
            return
        cols = list(doc["figures"][figs[0]]["results"])
        lines.append("")
        lines.append("| workload | " + " | ".join(doc["systems"][c] for c in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for f in figs:
            fd = doc["figures"][f]
            cells = []
            for c in cols:
                row = fd["results"].get(c, {"value": None, "na": "not measured"})
                if row["value"] is None:
                    if row["na"] not in notes:
                        notes.append(row["na"])
                    cells.append(f"n/a [{notes.index(row['na']) + 1}]")
                elif c == fd["baseline"]:
                    cells.append(fmt(row["value"], fd["unit"]))
                else:
                    ratio = f" ({row['ratio']:.2f}x)" if "ratio" in row else ""
                    cells.append(fmt(row["value"], fd["unit"]) + ratio)
                if row.get("failed_rounds"):
                    note = f"failed in {len(row['failed_rounds'])} round(s): {row['failed_rounds'][-1]}"
                    if note not in notes:
                        notes.append(note)
                    cells[-1] += f" [{notes.index(note) + 1}]"
            lines.append(f"| {fd['title']} ({fd['unit']}) | " + " | ".join(cells) + " |")

    table(["bulk_1", "bulk_4", "cpu_gb_1", "cpu_gb_4", "cpu_gb_paced", "rr_p50", "rr_p99", "conn_rate"])
    table(["http_rps"])
    lines.append("")
    lines.append("Ratios are to direct (no proxy) on the same workload. CPU per GB is whole-system "
                 f"busy time from /proc/stat over GB received; the fixed-rate figure paces iperf3 at "
                 f"{m['profile']['pace']}bit/s so every system does the same work. CPU figures are the "
                 "median of the valid rounds (a round whose idle clock ran ahead of the wall clock reads 0 "
                 "and is dropped); the others are the best round.")
    if doc["targets"]:
        lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
        for t in doc["targets"]:
            cmp = ">=" if "bulk" in t["target"] else "<="
            if t["value"] is None:
                val = "n/a"
            else:  # enough digits that a near-miss does not print as the goal itself
                val = f"{t['value']:.3f}x" if abs(t["value"] - t["goal"]) < 0.005 else f"{t['value']:.2f}x"
            verdict = {True: "met", False: "**missed**", None: "n/a"}[t["pass"]]
            lines.append(f"| {t['target']} | {val} | {cmp} {t['goal']}x | {verdict} |")
    if notes:
        lines.append("")
        for i, n in enumerate(notes, 1):
            lines.append(f"[{i}] {n}")
    return "\n".join(lines) + "\n"


def draw_chart(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = list(doc["figures"])
    ncols = 3
    nrows = (len(figs) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(16, 4.6 * nrows), squeeze=False)
    palette = {"direct": "#7f7f7f", "shunt copy": "#9ecae1", "shunt splice": "#4292c6",
               "shunt sockmap": "#08306b", "HAProxy": "#e6550d", "nginx stream": "#31a354",
               "shunt http rule": "#08306b", "HAProxy http ACL": "#e6550d"}
    for ax, f in zip(axes.flat, figs):
        fd = doc["figures"][f]
        names = list(fd["results"])
        labels = [doc["systems"][n].replace(" [socat stand-in]", "*").replace(" ", "\n", 1) for n in names]
        values = [fd["results"][n]["value"] or 0 for n in names]
        colors = [palette.get(doc["systems"][n].replace(" [socat stand-in]", ""), "#999999") for n in names]
        # One outlier (a p99 of milliseconds) would flatten every other bar:
        # cut the axis above the rest and mark the cut bar with its value.
        ranked = sorted(values, reverse=True)
        top = ranked[0] if ranked and ranked[0] else 1
        clipped = len(ranked) > 1 and ranked[1] > 0 and ranked[0] > 4 * ranked[1]
        if clipped:
            top = ranked[1] * 1.6
            values = [min(v, top) for v in values]
        bars = ax.bar(range(len(names)), values, color=colors)
        for b, n in zip(bars, names):
            row = fd["results"][n]
            if row["value"] is None:
                text = "n/a"
            elif "ratio" in row and n != fd["baseline"]:
                text = f"{fmt(row['value'], fd['unit'])}\n{row['ratio']:.2f}x"
            else:
                text = fmt(row["value"], fd["unit"])
            if clipped and row["value"] is not None and row["value"] > top:
                text = "▲ " + text  # bar cut at the top of the axis
                b.set_hatch("//")
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + top * 0.02, text,
                    ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, top * 1.25)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(labels, fontsize=8)
        arrow = "higher is better" if fd["better"] == "higher" else "lower is better"
        ax.set_title(f"{fd['title']}\n{fd['unit']}, {arrow}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(figs):]:
        ax.axis("off")
    m = doc["meta"]
    title = (f"shunt side-by-side benchmark · {m['topology']} · {m['date']} · kernel {m['kernel']} · "
             f"{m['cores']} × {m['cpu']} · {m['profile']['rounds']} rounds")
    if m.get("stand_in"):
        title += f" · * = {m['stand_in']} stand-in"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(doc, out_dir, dated, latest, chart=True):
    paths = []
    for name in (dated, latest):
        p = os.path.join(out_dir, name + ".json")
        with open(p, "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        paths.append(p)
    md = os.path.join(out_dir, latest + ".md")
    with open(md, "w") as f:
        f.write(markdown(doc))
    paths.append(md)
    if chart:
        png = os.path.join(out_dir, latest + ".png")
        draw_chart(doc, png)
        paths.append(png)
    return paths


def publish(path, doc):
    """Replaces the block between the bench markers, if the file has them."""
    return replace_block(path, markdown(doc), MARK_BEGIN, MARK_END)


def replace_block(path, text, mark_begin, mark_end):
    """Replaces what lies between two marker lines of `path` with `text`;
    False when the file lacks them."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return False
    # Markers count only on lines of their own, so prose may name them.
    begin, end = "\n" + mark_begin + "\n", "\n" + mark_end
    if begin not in old or end not in old.split(begin, 1)[1]:
        return False
    head, rest = old.split(begin, 1)
    _, tail = ("\n" + rest).split(end, 1)
    with open(path, "w") as f:
        f.write(head + begin + text + end + tail)
    return True


def rebuild(doc):
    """Recomputes every figure's value, ratio and the targets from the
    samples a saved run kept (for a changed aggregation rule)."""
    for fig in doc["figures"].values():
        for name, row in fig["results"].items():
            if row.get("samples"):
                failed = row.get("failed_rounds")
                fig["results"][name] = _row(row["samples"], fig["better"], fig["unit"])
                if failed:
                    fig["results"][name]["failed_rounds"] = failed
        _add_ratios(fig["results"], fig["baseline"])
    doc["targets"] = targets(doc["figures"])
    return doc


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="Re-render a saved bench/run result from its samples.")
    ap.add_argument("json", help="a bench/results/*.json file")
    ap.add_argument("--publish", action="store_true", help="also update the tables in README.md and docs/benchmarks.md")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        doc = rebuild(json.load(f))
    out_dir = os.path.dirname(os.path.abspath(args.json))
    dated = os.path.basename(args.json)[: -len(".json")]
    suffix = "" if doc["meta"].get("topology", "loopback") == "loopback" else "-" + doc["meta"]["topology"]
    paths = write(doc, out_dir, dated, "latest" + suffix)
    if args.publish:
        root = os.path.dirname(os.path.dirname(out_dir))
        for f in (os.path.join(root, "docs", "benchmarks.md"), os.path.join(root, "README.md")):
            if publish(f, doc):
                paths.append(f)
    print(markdown(doc))
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])

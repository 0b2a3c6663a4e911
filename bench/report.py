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

from workloads import FIGURES, RATE_KEPT

MARK_BEGIN, MARK_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def markers(topology):
    """The block a run of `topology` publishes into: loopback keeps the
    original markers, every other topology has its own pair."""
    if topology in (None, "loopback"):
        return MARK_BEGIN, MARK_END
    return f"<!-- bench-{topology}:begin -->", f"<!-- bench-{topology}:end -->"


MANY = ("many_rate", "many_cpu_req", "many_cpu_added", "many_p50", "many_p99")


def _is_cpu(unit):
    return unit.startswith("CPU-")


def _aggregate(samples, better, unit):
    """(value, valid samples): see the module docstring for the rule."""
    if _is_cpu(unit):
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
    _many_derived(figures, extras)
    _paced_short(figures, extras, meta["profile"].get("pace", ""))
    doc = {"meta": meta, "systems": labels, "figures": figures, "extras": extras}
    doc["targets"] = targets(figures)
    return doc


def _many_derived(figures, extras):
    """CPU per request added over direct (a difference, so no ratio to
    direct), and a note on every many-connection figure of a system that
    did not keep up with the target rate in some round."""
    per_req = figures.get("many_cpu_req")
    if not per_req:
        return
    title, unit, better, _ = FIGURES["many_cpu_added"]
    base = per_req["results"].get(per_req["baseline"], {}).get("value")
    rows = {}
    for name, row in per_req["results"].items():
        if row["value"] is None or base is None:
            rows[name] = {"value": None, "na": row.get("na") or "direct not measured"}
        else:
            rows[name] = {"value": row["value"] - base}
    figures["many_cpu_added"] = {"title": title, "unit": unit, "better": better,
                                 "baseline": per_req["baseline"], "results": rows}
    for name, rates in figures.get("many_rate", {}).get("results", {}).items():
        target = (extras.get(name, {}).get("many_target_rate") or [None])[0]
        short = [r for r in rates.get("samples", []) if target and r < RATE_KEPT * target]
        if short:
            lost = sum(extras.get(name, {}).get("many_unanswered", []))
            note = (f"did not keep up with {target:,.0f} req/s in {len(short)} of {len(rates['samples'])} "
                    f"round(s) (reached {', '.join(f'{r:,.0f}' for r in short)}"
                    + (f"; {lost:,} requests still unanswered 3 s after the window, counted at their age"
                       if lost else "")
                    + "): its latency includes the queueing, its CPU per request is at a lower rate")
            for fig in MANY:
                if name in figures.get(fig, {}).get("results", {}):
                    figures[fig]["results"][name]["short"] = note


def _paced_short(figures, extras, pace):
    """Marks the fixed-rate CPU figure of a system that fell short of the
    pace in some round: its CPU per GB is then at a lower rate, not
    comparable with the others'."""
    rows = figures.get("cpu_gb_paced", {}).get("results", {})
    try:
        goal = float(pace.rstrip("GgMm")) * (1 if pace[-1] in "Gg" else 1e-3)
    except (ValueError, IndexError):
        return
    for name, row in rows.items():
        got = extras.get(name, {}).get("paced_gbit", [])
        short = [g for g in got if g < RATE_KEPT * goal]
        if short:
            row["short"] = (f"did not keep the {pace}bit/s pace in {len(short)} of {len(got)} round(s) "
                            f"(reached {', '.join(f'{g:.2f}' for g in short)} Gbit/s): CPU per GB at a lower rate")


def _value(figures, fig, system):
    return figures.get(fig, {}).get("results", {}).get(system, {}).get("value")


def targets(figures):
    """The targets of issue 12 (kernel short-circuit) and of issue 2 (the
    first sockmap data path), evaluated on this run's figures."""
    out = []

    def add(issue, name, r, goal, higher):
        passed = None if r is None else (r >= goal if higher else r <= goal)
        out.append({"issue": issue, "target": name, "value": r, "goal": goal, "pass": passed,
                    "cmp": ">=" if higher else "<="})

    def ratio(issue, name, fig, a, b, goal, higher):
        va, vb = _value(figures, fig, a), _value(figures, fig, b)
        add(issue, name, None if va is None or not vb else va / vb, goal, higher)

    # Issue 12 for today's sockmap path and, when the run has it, for the
    # sk_msg endpoint short-circuit (system shunt-sockmap-msg).
    ran = {n for f in figures.values() for n, row in f["results"].items() if row.get("value") is not None}
    for sm, label in (("shunt-sockmap", "sockmap"), ("shunt-sockmap-msg", "sockmap+sk_msg")):
        if sm != "shunt-sockmap" and sm not in ran:
            continue
        for fig, streams in (("bulk_1", "1 stream"), ("bulk_4", "4 streams")):
            ratio(12, f"{label} / splice bulk, {streams}", fig, sm, "shunt-splice", 1.3, True)
            ratio(12, f"{label} / direct bulk, {streams}", fig, sm, "direct", 0.9, True)
        ratio(12, f"{label} / splice CPU per GB, fixed rate", "cpu_gb_paced", sm, "shunt-splice", 0.7, False)
        added = figures.get("many_cpu_added", {}).get("results", {})
        a, sp = (added.get(n, {}).get("value") for n in (sm, "shunt-splice"))
        # Below direct's own cost is noise, not a saving: no verdict then.
        add(12, f"{label} / splice CPU per request added over direct, many connections"
            + (" (below direct: noise)" if a is not None and a < 0 else ""),
            None if a is None or a < 0 or not sp or sp <= 0 else a / sp, 0.5, False)
        ratio(12, f"{label} / splice p99, many connections", "many_p99", sm, "shunt-splice", 1.0, False)

    for fig, streams in (("bulk_1", "1 stream"), ("bulk_4", "4 streams")):
        ratio(2, f"sockmap / splice bulk, {streams}", fig, "shunt-sockmap", "shunt-splice", 1.0, True)
        ratio(2, f"sockmap / HAProxy bulk, {streams}", fig, "shunt-sockmap", "haproxy", 1.5, True)
    for fig, what in (("cpu_gb_1", "unpaced"), ("cpu_gb_paced", "fixed rate")):
        ratio(2, f"sockmap / splice CPU per GB, {what}", fig, "shunt-sockmap", "shunt-splice", 1.0, False)
    d, s, c = (_value(figures, "rr_p50", n) for n in ("direct", "shunt-sockmap", "shunt-copy"))
    add(2, "sockmap / copy added p50 latency", None if None in (d, s, c) or c - d <= 0 else (s - d) / (c - d),
        0.5, False)
    return [t for t in out if t["value"] is not None or t["issue"] == 12]


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit in ("conn/s", "req/s"):
        return f"{v:,.0f}"
    if unit == "CPU-s/GB":
        return f"{v:.3f}"
    if unit == "CPU-µs/req":
        return f"{v:.1f}"
    return f"{v:.1f}"


def markdown(doc):
    m = doc["meta"]
    lines = [f"Run {m['date']} · kernel {m['kernel']} · {m['cpu']} × {m['cores']} · "
             f"topology {m['topology']} · git {m.get('versions', {}).get('git') or '?'} · "
             f"profile {m['profile']['name']} "
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
                elif c == fd["baseline"] or f == "many_cpu_added":
                    cells.append(fmt(row["value"], fd["unit"]))
                else:
                    ratio = f" ({row['ratio']:.2f}x)" if "ratio" in row else ""
                    cells.append(fmt(row["value"], fd["unit"]) + ratio)
                for note in (f"failed in {len(row['failed_rounds'])} round(s): {row['failed_rounds'][-1]}"
                             if row.get("failed_rounds") else None, row.get("short")):
                    if not note:
                        continue
                    if note not in notes:
                        notes.append(note)
                    cells[-1] += f" [{notes.index(note) + 1}]"
            lines.append(f"| {fd['title']} ({fd['unit']}) | " + " | ".join(cells) + " |")

    table(["bulk_1", "bulk_4", "cpu_gb_1", "cpu_gb_4", "cpu_gb_paced", "rr_p50", "rr_p99", "conn_rate"])
    p = m["profile"]
    if any(f in doc["figures"] for f in MANY):
        lines += ["", f"Many keep-alive connections: {p.get('many_conns', 1000):,} connections, "
                      f"{p.get('many_size', 512)} B each way, one request in flight per connection, "
                      f"{p.get('many_rate', 20000):,} req/s in all, {p.get('many_s', 5)} s measured:"]
        table(list(MANY))
    table(["http_rps"])
    lines.append("")
    lines.append("Ratios are to direct (no proxy) on the same workload. CPU per GB is whole-system "
                 f"busy time from /proc/stat over GB received; the fixed-rate figure paces iperf3 at "
                 f"{m['profile']['pace']}bit/s so every system does the same work. CPU figures are the "
                 "median of the valid rounds (a round reading 0 is dropped); the others are the best round. "
                 "Many connections: CPU per request is whole-system busy time over the measured window "
                 "divided by the requests completed in it; latency runs from each request's scheduled "
                 "send time (open loop, no coordinated omission).")
    if doc["targets"]:
        lines += ["", "| issue | target | measured | goal | |", "|---|---|---:|---:|---|"]
        for t in doc["targets"]:
            cmp = t.get("cmp") or (">=" if "bulk" in t["target"] else "<=")
            if t["value"] is None:
                val = "n/a"
            else:  # enough digits that a near-miss does not print as the goal itself
                val = f"{t['value']:.3f}x" if abs(t["value"] - t["goal"]) < 0.005 else f"{t['value']:.2f}x"
            verdict = {True: "met", False: "**missed**", None: "n/a"}[t["pass"]]
            lines.append(f"| {t.get('issue', 2)} | {t['target']} | {val} | {cmp} {t['goal']}x | {verdict} |")
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
               "shunt sockmap": "#08306b", "shunt sockmap+sk_msg": "#6a51a3", "HAProxy": "#e6550d", "nginx stream": "#31a354",
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
    """Replaces the block between the markers of the run's topology, if the
    file has them."""
    return replace_block(path, markdown(doc), *markers(doc["meta"].get("topology")))


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
    # "\n" + rest: an empty block's end marker follows the begin line at once.
    if begin not in old or end not in "\n" + old.split(begin, 1)[1]:
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
    _many_derived(doc["figures"], doc.get("extras", {}))
    _paced_short(doc["figures"], doc.get("extras", {}), doc["meta"]["profile"].get("pace", ""))
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

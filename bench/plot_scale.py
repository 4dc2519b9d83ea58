#!/usr/bin/env python3
"""plot_scale.py - a log-log chart of `batpak-bench --scale` runs, as SVG.

    plot_scale.py LABEL=RUN.txt [LABEL=RUN.txt ...] OUT.svg

Each input is the driver's text output (one line per figure: N, metric,
median, unit, ...), with the label its line gets in the legend. Three panels
against the number of events: open + first get (warm), heap after open, and
bytes written by an open that appends one event and closes; one line per
run, and SQLite's figure from the last run. Only the standard library: any
SVG renderer turns it into a PNG.
"""
import math
import re
import sys

PANELS = [
    ("open_first_get_warm", "open + first get, warm (ms)", 1.0),
    ("heap_after_open", "heap after open (MiB)", 1.0),
    ("append_1_close_written", "append 1 + close: written (KiB)", 1.0),
]
LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+([0-9.e+]+)\s+(\S+).*sqlite\s+([0-9.e+]+)")


def read(path):
    out = {}
    for line in open(path):
        m = LINE.match(line)
        if m:
            n, metric, med, _unit, base = m.groups()
            out.setdefault(metric, {})[int(n)] = (float(med), float(base))
    return out


def panel(x0, y0, w, h, title, series):
    xs = sorted({n for s in series for n in s[1]})
    ys = [v for s in series for v in s[1].values() if v > 0]
    lx0, lx1 = math.log10(min(xs)) - 0.2, math.log10(max(xs)) + 0.2
    ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    if ly1 == ly0:
        ly1 += 1

    def px(n):
        return x0 + (math.log10(n) - lx0) / (lx1 - lx0) * w

    def py(v):
        return y0 + h - (math.log10(v) - ly0) / (ly1 - ly0) * h

    svg = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>',
           f'<text x="{x0 + w / 2}" y="{y0 - 10}" text-anchor="middle" font-size="14">{title}</text>']
    for d in range(ly0, ly1 + 1):
        y = py(10 ** d)
        svg.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + w}" y2="{y}" stroke="#ddd"/>')
        svg.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end" font-size="11">1e{d}</text>')
    last_x = None
    for n in xs:
        x = px(n)
        if last_x is not None and x - last_x < 28:
            continue  # too close to the previous label (10M and 12M, say)
        last_x = x
        label = f"{n // 1000000}M" if n >= 1000000 else f"{n // 1000}k"
        svg.append(f'<text x="{x}" y="{y0 + h + 16}" text-anchor="middle" font-size="11">{label}</text>')
    for name, points, colour in series:
        pts = [(px(n), py(v)) for n, v in sorted(points.items()) if v > 0]
        svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                   % (colour, " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)))
        for a, b in pts:
            svg.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>')
    return svg


COLOURS = ["#c0392b", "#2471a3", "#27ae60", "#8e44ad"]


def main():
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[1:-1]):
        sys.exit(__doc__)
    runs = [(a.split("=", 1)[0], read(a.split("=", 1)[1])) for a in sys.argv[1:-1]]
    out = sys.argv[-1]
    w, h, gap = 300, 240, 90
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * (w + gap) + 40}" height="{h + 130}" '
           'font-family="sans-serif">', '<rect width="100%" height="100%" fill="white"/>']
    legend = [(label, COLOURS[k % len(COLOURS)]) for k, (label, _) in enumerate(runs)] + [("SQLite", "#7f8c8d")]
    for i, (metric, title, _) in enumerate(PANELS):
        series = [(label, {n: v[0] for n, v in run.get(metric, {}).items()}, COLOURS[k % len(COLOURS)])
                  for k, (label, run) in enumerate(runs)]
        series.append(("SQLite", {n: v[1] for n, v in runs[-1][1].get(metric, {}).items()}, "#7f8c8d"))
        svg += panel(70 + i * (w + gap), 40, w, h, title, series)
    y = h + 100
    step = (3 * (w + gap) - 60) // len(legend)
    for j, (name, colour) in enumerate(legend):
        x = 70 + j * step
        svg.append(f'<line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" stroke="{colour}" stroke-width="3"/>')
        svg.append(f'<text x="{x + 38}" y="{y + 4}" font-size="12">{name}</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()

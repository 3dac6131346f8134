#!/usr/bin/env python3
"""Draws docs/figures/windows.svg: one key's records on an event-time axis and the windows
each kind makes of them (tumbling, hopping, sliding, session), with grace and a late record.

Run: python3 docs/figures/windows.py   (standard library only)
"""
from pathlib import Path

# One key's records: (event time, arrival order). The record at 4 arrives after stream time
# has reached 17: its window [0, 10) closed at 10 + grace 5 = 15, so it is late.
RECORDS = [(1, 1), (3, 2), (8, 3), (12, 4), (17, 5), (4, 6), (27, 7), (29, 8)]
LATE = {(4, 6)}
GRACE = 5
SCALE, LEFT, WIDTH = 22, 150, 40  # px per ms, left margin, axis length in ms


def x(t):
    return LEFT + t * SCALE


def sliding(size):
    """Sliding windows [s, s + size] (drawn as [s, s + size + 1)): one ending at each record,
    and one starting just after each record that holds another record."""
    times = sorted({t for (t, n) in RECORDS if (t, n) not in LATE})
    starts = {t - size for t in times}
    starts |= {p + 1 for p in times if any(p < t <= p + 1 + size for t in times)}
    return [(s, s + size + 1) for s in sorted(starts)]


# Rows: (label, windows, lanes the windows cycle through).
ROWS = [
    ("tumbling(10)", [(0, 10), (10, 20), (20, 30)], 1),
    ("hopping(10, 5)", [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30), (25, 35)], 2),
    ("sliding(6)", sliding(6), 4),
    ("session(gap 6)", [(1, 17 + 6), (27, 29 + 6)], 1),
]


def main():
    tops = []
    y = 120
    for _, _, lanes in ROWS:
        tops.append(y)
        y += 48 + 22 * lanes
    height = y + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH * SCALE + 40}" '
        f'height="{height}" font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="15">One key\'s records in event time '
        f"(numbers: arrival order); grace {GRACE} ms</text>",
    ]
    axis_y = 70
    out.append(f'<line x1="{x(0)}" y1="{axis_y}" x2="{x(WIDTH)}" y2="{axis_y}" stroke="black"/>')
    for t in range(0, WIDTH + 1, 5):
        out.append(f'<line x1="{x(t)}" y1="{axis_y - 4}" x2="{x(t)}" y2="{axis_y + 4}" stroke="black"/>')
        out.append(f'<text x="{x(t)}" y="{axis_y + 18}" text-anchor="middle">{t}</text>')
    out.append(f'<text x="10" y="{axis_y + 4}">event time (ms)</text>')
    for t, n in RECORDS:
        late = (t, n) in LATE
        color = "#c0392b" if late else "#2c3e50"
        out.append(f'<circle cx="{x(t)}" cy="{axis_y - 18}" r="8" fill="{color}"/>')
        out.append(
            f'<text x="{x(t)}" y="{axis_y - 14}" fill="white" font-size="11" '
            f'text-anchor="middle">{n}</text>'
        )
    out.append(
        f'<text x="{x(4) + 12}" y="{axis_y - 34}" fill="#c0392b">late: arrives at stream time 17 '
        f"&gt;= 10 + {GRACE}</text>"
    )
    for (name, windows, lanes), y in zip(ROWS, tops):
        out.append(f'<text x="10" y="{y + 16}">{name}</text>')
        for j, (start, end) in enumerate(windows):
            lane = y + (j % lanes) * 22
            shown = max(start, 0)  # the axis starts at 0
            out.append(
                f'<rect x="{x(shown)}" y="{lane}" width="{(end - shown) * SCALE}" height="18" '
                f'fill="#aed6f1" stroke="#2874a6"/>'
            )
            # Grace: the window still takes records until end + grace.
            out.append(
                f'<rect x="{x(end)}" y="{lane + 6}" width="{GRACE * SCALE}" height="6" '
                f'fill="#f9e79f" stroke="#b7950b"/>'
            )
            count = sum(
                1 for (t, n) in RECORDS if start <= t < end and (t, n) not in LATE
            )
            out.append(
                f'<text x="{x(shown) + 4}" y="{lane + 14}" font-size="11">[{start}, {end}) '
                f"n={count}</text>"
            )
    legend_y = height - 14
    out.append(
        f'<rect x="{LEFT}" y="{legend_y - 10}" width="20" height="10" fill="#aed6f1" stroke="#2874a6"/>'
        f'<text x="{LEFT + 26}" y="{legend_y}">window [start, end)</text>'
        f'<rect x="{LEFT + 200}" y="{legend_y - 8}" width="20" height="6" fill="#f9e79f" stroke="#b7950b"/>'
        f'<text x="{LEFT + 226}" y="{legend_y}">grace: still open; emitted once when stream time '
        f"reaches end + grace</text>"
    )
    out.append("</svg>")
    path = Path(__file__).with_name("windows.svg")
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Summaries, issue 13's goals check and tables (plain text and markdown) for the notation benchmark.

Input is one dict per piece: ``{"piece": name, "ours": metrics | {"error": ...}, "baseline": ...,
"truth": ...}`` with the metrics of :mod:`notation_eval`. Means are over the pieces a system
was measured on; rates (time signature, barline, key, tempo, titles) are over all pieces, a
failed piece counting as wrong. MV2H means leave out timed-out pieces and say how many.
"""

from __future__ import annotations

import numpy as np

SYSTEMS = ("ours", "baseline", "truth")
MV2H_PARTS = ("multi_pitch", "voice", "meter", "value", "harmony")


def _ok(m: dict | None) -> bool:
    return bool(m) and "error" not in m


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict], system: str) -> dict:
    """Means and rates of one system over the pieces (see the module docstring)."""
    n = len(rows)
    measured = [(r, r[system]) for r in rows if _ok(r.get(system)) and _ok(r.get("truth"))]
    mets = [m for _, m in measured]
    mv2h_done = [m["mv2h"] for m in mets if "mv2h" in m.get("mv2h", {})]

    def rate(key: str) -> dict:
        right = sum(bool(m.get(key)) for m in mets)
        return {"right": right, "of": n, "rate": right / n if n else 0.0}

    ratios = [
        m["noteheads_per_measure"] / r["truth"]["noteheads_per_measure"]
        for r, m in measured
        if r["truth"]["noteheads_per_measure"] > 0
    ]
    short_within = sum(m["short"] <= 2 * r["truth"]["short"] + 10 for r, m in measured)
    out = {
        "pieces": n,
        "measured": len(mets),
        "failed": n - len(mets),
        "onset_f1": _mean([m["onset_f1"] for m in mets]),
        "onset_offset_f1": _mean([m["onset_offset_f1"] for m in mets]),
        "mv2h": _mean([v["mv2h"] for v in mv2h_done]),
        **{f"mv2h_{k}": _mean([v[k] for v in mv2h_done]) for k in MV2H_PARTS},
        "mv2h_scored": len(mv2h_done),
        "mv2h_timeouts": sum(bool(m.get("mv2h", {}).get("timeout")) for m in mets),
        "tied_fraction": _mean([m["tied_fraction"] for m in mets]),
        "short_per_piece": _mean([m["short"] for m in mets]),
        "short_pieces_within_goal": short_within,
        "noteheads_per_measure": _mean([m["noteheads_per_measure"] for m in mets]),
        "noteheads_per_measure_vs_truth": _mean(ratios),
        "voices_per_staff": _mean([m["voices_per_staff"] for m in mets]),
        "title_ok": sum(m["title_ok"] for m in mets),
        "composer_ok": sum(m["composer_ok"] for m in mets),
    }
    if system != "truth":
        out.update(
            {
                "time_signature": rate("time_signature_ok"),
                "first_barline": rate("first_barline_ok"),
                "key": rate("key_ok"),
                "tempo": rate("tempo_ok"),
            }
        )
    return out


def goals(summary: dict, truth: dict) -> list[dict]:
    """Issue 13's goals on the dev set: value, target, met, and the margin (value - bound)."""
    s = summary
    short_cap = 2 * (truth["short_per_piece"] or 0) + 10
    spec = [  # name, value, target as written, bound, whether higher is better
        ("tied noteheads", s["tied_fraction"], "<= 0.10", 0.10, False),
        (
            "16th-or-shorter per piece",
            s["short_per_piece"],
            f"<= 2x truth + 10 = {short_cap:.1f} ({s['short_pieces_within_goal']}/{s['measured']} pieces within)",
            short_cap,
            False,
        ),
        ("noteheads per measure / truth's", s["noteheads_per_measure_vs_truth"], "<= 1.3", 1.3, False),
        ("time signature right", s["time_signature"]["rate"], ">= 0.90", 0.90, True),
        ("first barline right", s["first_barline"]["rate"], ">= 0.80", 0.80, True),
        ("key signature right", s["key"]["rate"], ">= 0.95", 0.95, True),
        (
            "MV2H mean",
            s["mv2h"],
            f">= 0.87 (over {s['mv2h_scored']} pieces; {s['mv2h_timeouts']} timed out)",
            0.87,
            True,
        ),
        ("read-back onset F1", s["onset_f1"], ">= 0.84", 0.84, True),
        ("read-back onset+offset F1", s["onset_offset_f1"], ">= 0.60", 0.60, True),
    ]
    rows = []
    for name, value, target, bound, higher in spec:
        met = value is not None and (value >= bound if higher else value <= bound)
        rows.append(
            {
                "goal": name,
                "value": value,
                "target": target,
                "met": bool(met),
                "margin": None if value is None else value - bound,
            }
        )
    return rows


# --------------------------------------------------------------------------- formatting


def _f(v, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def _yes(flag) -> str:
    return "ok" if flag else "x"


def _mv2h_cell(m: dict) -> str:
    v = m.get("mv2h", {})
    if v.get("timeout"):
        return (
            f"timed out ({v['alignments']:.2g} alignments)"
            if v.get("alignments")
            else f"timed out ({v['timeout_s']:g} s)"
        )
    if "mv2h" not in v:
        return "—"
    return f"{v['mv2h']:.3f} [" + " ".join(f"{v[k]:.2f}" for k in MV2H_PARTS) + "]"


PIECE_COLUMNS = (
    "piece",
    "system",
    "onset F1",
    "+offset F1",
    "MV2H [mp voice meter value harm]",
    "tied",
    "16th",
    "heads/bar",
    "voices",
    "time sig",
    "key",
    "tempo (mean)",
    "1st barline s",
    "title/composer",
)


def piece_cells(name: str, system: str, m: dict | None) -> list[str]:
    """One table row: a system's figures on one piece (the truth's own figures on its row)."""
    if not m:
        return [name, system, "not run"] + [""] * (len(PIECE_COLUMNS) - 3)
    if "error" in m:
        return [name, system, "FAILED"] + [""] * (len(PIECE_COLUMNS) - 3)
    truth = system == "truth"

    def mark(key):
        return "" if truth else " " + _yes(m.get(key))

    barline = f"{m['first_barline_s']:.2f}"
    if not truth:
        barline += f" ({m['first_barline_error_s']:+.2f}){mark('first_barline_ok')}"
    return [
        name,
        system,
        _f(m["onset_f1"]),
        _f(m["onset_offset_f1"]),
        "1 (self)" if truth else _mv2h_cell(m),
        _f(m["tied_fraction"], ".2f"),
        str(m["short"]),
        _f(m["noteheads_per_measure"], ".1f"),
        _f(m["voices_per_staff"], ".2f"),
        m["time_signature"] + ("" if m["first_implicit"] is False else " +pickup") + mark("time_signature_ok"),
        str(m["fifths"]) + mark("key_ok"),
        f"{m['tempo_mean_bpm']:.1f}" + mark("tempo_ok"),
        barline,
        f"{_yes(m['title_ok'])}/{_yes(m['composer_ok'])}",
    ]


def failures(rows: list[dict]) -> list[str]:
    """``piece system: error`` for every piece a system failed on."""
    return [
        f"{r['piece']} {system}: {r[system]['error']}"
        for r in rows
        for system in SYSTEMS
        if isinstance(r.get(system), dict) and "error" in r[system]
    ]


def summary_cells(summaries: dict[str, dict]) -> list[list[str]]:
    """The notation-metrics.md table: one row per measure, columns ours / baseline / truth."""
    o, b, t = (summaries[s] for s in SYSTEMS)

    def mv2h(s):
        if s["mv2h"] is None:
            return "—"
        parts = " ".join(_f(s[f"mv2h_{k}"], ".2f") for k in MV2H_PARTS)
        timeouts = f"; {s['mv2h_timeouts']} timed out" if s["mv2h_timeouts"] else ""
        return f"{s['mv2h']:.3f} [{parts}] (n={s['mv2h_scored']}{timeouts})"

    def rate(s, key):
        return f"{s[key]['right']}/{s[key]['of']}"

    return [
        [
            "read-back onset F1 / with offsets",
            f"{_f(o['onset_f1'])} / {_f(o['onset_offset_f1'])}",
            f"{_f(b['onset_f1'])} / {_f(b['onset_offset_f1'])}",
            f"{_f(t['onset_f1'])} / {_f(t['onset_offset_f1'])}",
        ],
        ["MV2H mean [multi-pitch, voice, meter, value, harmony]", mv2h(o), mv2h(b), "1.0"],
        ["tied noteheads", _f(o["tied_fraction"], ".2f"), _f(b["tied_fraction"], ".2f"), _f(t["tied_fraction"], ".2f")],
        [
            "16th-or-shorter noteheads per piece",
            _f(o["short_per_piece"], ".1f"),
            _f(b["short_per_piece"], ".1f"),
            _f(t["short_per_piece"], ".1f"),
        ],
        [
            "noteheads per measure (/ truth's)",
            f"{_f(o['noteheads_per_measure'], '.1f')} ({_f(o['noteheads_per_measure_vs_truth'], '.2f')})",
            f"{_f(b['noteheads_per_measure'], '.1f')} ({_f(b['noteheads_per_measure_vs_truth'], '.2f')})",
            f"{_f(t['noteheads_per_measure'], '.1f')} (1)",
        ],
        [
            "voices per staff",
            _f(o["voices_per_staff"], ".2f"),
            _f(b["voices_per_staff"], ".2f"),
            _f(t["voices_per_staff"], ".2f"),
        ],
        [
            "time signature right / first barline right",
            f"{rate(o, 'time_signature')} / {rate(o, 'first_barline')}",
            f"{rate(b, 'time_signature')} / {rate(b, 'first_barline')}",
            "",
        ],
        [
            "key signature right / tempo within 4 %",
            f"{rate(o, 'key')} / {rate(o, 'tempo')}",
            f"{rate(b, 'key')} / {rate(b, 'tempo')}",
            "",
        ],
        [
            "title from source / no placeholder composer",
            *(f"{s['title_ok']}/{s['pieces']} / {s['composer_ok']}/{s['pieces']}" for s in (o, b, t)),
        ],
        ["pieces failed", str(o["failed"]), str(b["failed"]), str(t["failed"])],
    ]


def goal_cells(rows: list[dict]) -> list[list[str]]:
    def verdict(g: dict) -> str:
        if g["value"] is None:
            return "not measured"
        return "met" if g["met"] else f"missed by {abs(g['margin']):.3f}"

    return [[g["goal"], _f(g["value"]), g["target"], verdict(g)] for g in rows]


def text_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return "\n".join(
        [
            "| " + " | ".join(map(esc, header)) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(map(esc, r)) + " |" for r in rows),
        ]
    )

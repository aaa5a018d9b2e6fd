"""The daily report as people see it: the Markdown of its Prefect artifact and the week's chart.

Both are pure functions of :mod:`reelflow.report_rules`' figures. The chart is an SVG (no
plotting library, nothing to install; any browser and the Prefect UI's image tag show it): the
videos stored and failed per day as stacked bars, the success rate as a line against the 95 %
target. Every text in it is escaped; the SVG has no script, link or external reference.

Must not: read a clock, the store or the catalog; nor put a presigned URL in the Markdown (the
caller passes the link, REELFLOW_PUBLIC_BASE_URL or the store URI).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from xml.sax.saxutils import escape

from reelflow.report_rules import SUCCESS_TARGET, AccountSummary, Summary

KIB = 1024.0
MAX_ACCOUNT_ROWS = 25  # the busiest; an artifact is read, not searched


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < KIB or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= KIB
    raise AssertionError("unreachable")


def human_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 90:
        return f"{s:.1f} s"
    if s < 90 * 60:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def percent(r: float | None) -> str:
    return "–" if r is None else f"{100 * r:.1f} %"


def verdict(s: Summary) -> str:
    if s.success_rate is None:
        return "– (nothing finished)"
    mark = "✅" if s.meets_target else "⚠️ below target"
    return f"{percent(s.success_rate)} {mark}"


def _cell(text: object) -> str:
    # Account names and reasons are checked words, but a table cell must never break.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _accounts_table(accounts: Sequence[AccountSummary]) -> list[str]:
    if not accounts:
        return ["(no finished work)"]
    lines = [
        "| account | stored | failed | success | published | publish failed "
        "| median to stored | stored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in accounts[:MAX_ACCOUNT_ROWS]:
        lines.append(
            f"| {_cell(a.account)} | {a.stored} | {a.failed} | {percent(a.success_rate)} "
            f"| {a.published} | {a.publish_failed} | {human_seconds(a.median_to_stored_s)} "
            f"| {human_bytes(a.stored_bytes)} |"
        )
    if len(accounts) > MAX_ACCOUNT_ROWS:
        lines += [
            "",
            f"… and {len(accounts) - MAX_ACCOUNT_ROWS} more accounts (in the run's result)",
        ]
    return lines


def _reasons(s: Summary) -> list[str]:
    if not s.top_reasons:
        return ["(no failures)"]
    total = s.failed + s.publish_failed
    lines = ["| reason | failures | share |", "|---|---:|---:|"]
    for reason, count in s.top_reasons:
        lines.append(f"| `{_cell(reason)}` | {count} | {percent(count / total)} |")
    return lines


def text_chart(days: Sequence[Summary], width: int = 30) -> list[str]:
    """The week as lines of block characters (readable in the artifact without the image)."""
    peak = max((d.finished for d in days), default=0) or 1
    lines = []
    for d in days:
        bar = "█" * round(width * d.stored / peak) + "░" * round(width * d.failed / peak)
        lines.append(
            f"{d.end:%m-%d} {bar:<{width}} {d.stored:>5} stored {d.failed:>4} failed "
            f"{percent(d.success_rate):>8}"
        )
    return lines


def markdown(
    day: Summary,
    week: Summary,
    series: Sequence[Summary],
    *,
    chart_link: str | None,
    chart_is_public: bool,
) -> str:
    """The artifact: the last 24 h beside the last 7 days, the week's chart, failure reasons,
    and per account. ``chart_is_public``: the link is an http(s) URL a browser can load, so the
    chart shows inline; otherwise it is a store URI shown as a link."""
    rows = [
        ("uploads finished (stored + failed)", day.finished, week.finished),
        (f"success rate (target ≥ {100 * SUCCESS_TARGET:.0f} %)", verdict(day), verdict(week)),
        ("cancelled", day.cancelled, week.cancelled),
        (
            "last byte → stored, median / p95",
            f"{human_seconds(day.to_stored.median_s)} / {human_seconds(day.to_stored.p95_s)}",
            f"{human_seconds(week.to_stored.median_s)} / {human_seconds(week.to_stored.p95_s)}",
        ),
        (
            "last byte → published, median / p95",
            f"{human_seconds(day.to_published.median_s)} / {human_seconds(day.to_published.p95_s)}",
            f"{human_seconds(week.to_published.median_s)} / "
            f"{human_seconds(week.to_published.p95_s)}",
        ),
        (
            "publishes: published / failed (success)",
            f"{day.published} / {day.publish_failed} ({percent(day.publish_success_rate)})",
            f"{week.published} / {week.publish_failed} ({percent(week.publish_success_rate)})",
        ),
        (
            "stored (throughput)",
            f"{human_bytes(day.stored_bytes)} ({human_bytes(day.throughput_bytes_s)}/s)",
            f"{human_bytes(week.stored_bytes)} ({human_bytes(week.throughput_bytes_s)}/s)",
        ),
    ]
    out = [
        f"# reelflow daily report, {_stamp(day.end)}",
        "",
        "| | last 24 h | last 7 days |",
        "|---|---:|---:|",
        *(f"| {name} | {a} | {b} |" for name, a, b in rows),
        "",
        "## The week",
        "",
    ]
    if chart_link and chart_is_public:
        out += [f"![videos stored and failed per day, success rate]({chart_link})", ""]
    if chart_link:
        out += [f"Chart: [{chart_link.rsplit('/', 1)[-1]}]({chart_link})", ""]
    out += ["```", *text_chart(series), "```", ""]
    out += ["## Top failure reasons, last 24 h", "", *_reasons(day), ""]
    out += ["## Top failure reasons, last 7 days", "", *_reasons(week), ""]
    out += ["## Per account, last 24 h", "", *_accounts_table(day.per_account), ""]
    out += ["## Per account, last 7 days", "", *_accounts_table(week.per_account), ""]
    out += [
        f"Windows end {_stamp(week.end)}. Success = stored / (stored + failed); a cancel is "
        "neither. Times from the last byte (the run's `received` row) to stored and to its "
        "first post.",
    ]
    return "\n".join(out) + "\n"


# --- the chart ------------------------------------------------------------------------------------

W, H = 760, 340
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 48, 52
GREEN, RED, BLUE = "#2e7d32", "#c62828", "#1565c0"


def _nice_ceiling(n: int) -> int:
    if n <= 5:
        return 5
    step = 10 ** (len(str(n)) - 1)
    return ((n + step - 1) // step) * step


def svg_chart(days: Sequence[Summary], *, title: str) -> str:
    """Stacked bars (stored, failed) per day, the success rate against the target."""
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    top = _nice_ceiling(max((d.finished for d in days), default=0))
    n = max(len(days), 1)
    slot = plot_w / n
    bar_w = slot * 0.6

    def y_count(v: float) -> float:
        return TOP + plot_h - plot_h * v / top

    def y_rate(r: float) -> float:
        return TOP + plot_h - plot_h * r

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
        f'<text x="{W / 2:.0f}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(6):  # grid and the left axis (videos)
        v = top * i / 5
        y = y_count(v)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#e0e0e0"/>'
        )
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        parts.append(
            f'<text x="{W - RIGHT + 6}" y="{y_rate(i / 5) + 4:.1f}" fill="{BLUE}">{i * 20} %</text>'
        )
    target_y = y_rate(SUCCESS_TARGET)
    parts.append(
        f'<line x1="{LEFT}" y1="{target_y:.1f}" x2="{W - RIGHT}" y2="{target_y:.1f}" '
        f'stroke="{BLUE}" stroke-dasharray="6 4" stroke-width="1"/>'
    )
    points = []
    for i, d in enumerate(days):
        x = LEFT + slot * i + (slot - bar_w) / 2
        y_stored = y_count(d.stored)
        parts.append(
            f'<rect x="{x:.1f}" y="{y_stored:.1f}" width="{bar_w:.1f}" '
            f'height="{TOP + plot_h - y_stored:.1f}" fill="{GREEN}"/>'
        )
        y_failed = y_count(d.stored + d.failed)
        parts.append(
            f'<rect x="{x:.1f}" y="{y_failed:.1f}" width="{bar_w:.1f}" '
            f'height="{y_stored - y_failed:.1f}" fill="{RED}"/>'
        )
        cx = x + bar_w / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">'
            f"{escape(f'{d.end:%a %m-%d}')}</text>"
        )
        if d.success_rate is not None:
            cy = y_rate(d.success_rate)
            points.append(f"{cx:.1f},{cy:.1f}")
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{BLUE}"/>')
    if len(points) > 1:
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{BLUE}" stroke-width="2"/>'
        )
    legend_y = H - 14
    x = LEFT
    for color, label in ((GREEN, "stored"), (RED, "failed"), (BLUE, "success rate")):
        parts.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="{legend_y}">{escape(label)}</text>'
        )
        x += 24 + 8 * len(label)
    parts.append(
        f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 18}" y2="{legend_y - 4}" stroke="{BLUE}" '
        f'stroke-dasharray="6 4"/><text x="{x + 24}" y="{legend_y}">'
        f"{100 * SUCCESS_TARGET:.0f} % target</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"

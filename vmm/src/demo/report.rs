//! The demo's report: grant latency per size in the GCMA paper's min/avg/max form, beside the
//! zeroing limit measured in the same run (a `memset` of the same bytes) and, for orientation, the
//! paper's own averages (different hardware: an ARMv7 board, 2015), plus an SVG chart.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Average latency (µs) the GCMA paper reports per grant size: `(pages, CMA, GCMA)`. LKML RFC v2,
/// 2015; ARMv7 4×1 GHz, 256 MiB area, background `make -j16`.
pub const PAPER_AVG_US: [(u64, f64, f64); 6] = [
    (1, 684.0, 26.0),
    (512, 1_162.0, 2_002.0),
    (1024, 12_303.0, 3_495.0),
    (4096, 298_640.0, 13_091.0),
    (16384, 657_603.0, 30_474.0),
    (32000, 641_340.0, 44_675.0),
];

/// min / avg / max of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest, µs.
    pub min_us: f64,
    /// Mean, µs.
    pub avg_us: f64,
    /// Largest, µs.
    pub max_us: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        Some(Summary {
            n: us.len(),
            min_us: us.iter().copied().fold(f64::INFINITY, f64::min),
            avg_us: us.iter().sum::<f64>() / us.len() as f64,
            max_us: us.iter().copied().fold(0.0, f64::max),
        })
    }
}

/// One grant size's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeRow {
    /// Grant size in 4 KiB pages.
    pub pages: u64,
    /// Latency of each grant, as measured.
    pub grants: Vec<Duration>,
    /// Latency of zeroing the same number of bytes with `memset`, measured in the same run.
    pub memset: Vec<Duration>,
}

/// Times `runs` memsets of `pages` 4 KiB pages of already-faulted memory: the least a grant that
/// must hand out zeroed memory can cost.
pub fn measure_memset(pages: u64, runs: usize) -> Vec<Duration> {
    let len = (pages as usize).saturating_mul(4096);
    let mut buf = vec![1u8; len];
    (0..runs)
        .map(|i| {
            let t = Instant::now();
            buf.fill(0);
            std::hint::black_box(&mut buf);
            let d = t.elapsed();
            // Dirty it again so the next fill is a real write.
            if let Some(b) = buf.get_mut(i % len.max(1)) {
                *b = 1;
            }
            buf.iter_mut().step_by(4096).for_each(|b| *b = 1);
            d
        })
        .collect()
}

/// The table, one line per size: ours, memset, ratio, and the paper's averages.
pub fn render_table(rows: &[SizeRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} | {:>30} | {:>30} | {:>9} | {:>24}",
        "pages",
        "grant min / avg / max (µs)",
        "memset min / avg / max (µs)",
        "avg ratio",
        "paper avg CMA / GCMA (µs)"
    );
    let _ = writeln!(out, "{}", "-".repeat(112));
    for r in rows {
        let g = Summary::of(&r.grants);
        let m = Summary::of(&r.memset);
        let fmt3 = |s: Option<Summary>| match s {
            Some(s) => format!("{:.1} / {:.1} / {:.1}", s.min_us, s.avg_us, s.max_us),
            None => "-".to_string(),
        };
        let ratio = match (g, m) {
            (Some(g), Some(m)) if m.avg_us > 0.0 => format!("{:.2}x", g.avg_us / m.avg_us),
            _ => "-".into(),
        };
        let paper = PAPER_AVG_US
            .iter()
            .find(|p| p.0 == r.pages)
            .map_or("-".to_string(), |p| format!("{:.0} / {:.0}", p.1, p.2));
        let _ = writeln!(
            out,
            "{:>7} | {:>30} | {:>30} | {:>9} | {:>24}",
            r.pages,
            fmt3(g),
            fmt3(m),
            ratio,
            paper
        );
    }
    out
}

/// An SVG line chart (log–log) of average grant latency per size with min–max bars, the memset
/// average, and the paper's CMA and GCMA averages as reference lines.
pub fn render_svg(rows: &[SizeRow], title: &str) -> String {
    const W: f64 = 760.0;
    const H: f64 = 460.0;
    const L: f64 = 70.0;
    const R: f64 = 190.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let pts: Vec<(u64, Summary, Option<Summary>)> = rows
        .iter()
        .filter_map(|r| Some((r.pages, Summary::of(&r.grants)?, Summary::of(&r.memset))))
        .collect();
    let mut ys: Vec<f64> = pts
        .iter()
        .flat_map(|(_, g, m)| [g.min_us, g.max_us, m.map_or(g.avg_us, |m| m.avg_us)])
        .chain(PAPER_AVG_US.iter().flat_map(|p| [p.1, p.2]))
        .filter(|v| *v > 0.0)
        .collect();
    ys.push(1.0);
    let y_lo = ys
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let y_hi = ys
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(y_lo + 1.0);
    let x_hi = pts
        .iter()
        .map(|p| p.0)
        .chain(PAPER_AVG_US.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let x_hi = x_hi.log10().ceil();
    let px = |pages: u64| L + (pages.max(1) as f64).log10() / x_hi * (W - L - R);
    let py = |us: f64| T + (y_hi - us.max(1e-3).log10()) / (y_hi - y_lo) * (H - T - B);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (W - R + L) / 2.0,
        xml_escape(title)
    );
    // Axes and decade grid.
    for d in (y_lo as i32)..=(y_hi as i32) {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_us(10f64.powi(d))
        );
    }
    for d in 0..=(x_hi as i32) {
        let x = L + d as f64 / x_hi * (W - L - R);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 16.0,
            10u64.pow(d as u32)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">grant size (4 KiB pages)</text>"#,
        (W - R + L) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency</text>"#,
        H / 2.0,
        H / 2.0
    );
    let mut series = |name: &str, color: &str, dash: &str, points: Vec<(u64, f64)>, slot: usize| {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points
            .iter()
            .map(|(p, v)| format!("{:.1},{:.1}", px(*p), py(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
            path.join(" ")
        );
        for (p, v) in &points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(*p),
                py(*v)
            );
        }
        let ly = T + 10.0 + slot as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - R + 12.0,
            W - R + 36.0,
            W - R + 42.0,
            ly + 4.0,
            xml_escape(name)
        );
    };
    series(
        "paper CMA avg *",
        "#c0392b",
        "6 4",
        PAPER_AVG_US.iter().map(|p| (p.0, p.1)).collect(),
        0,
    );
    series(
        "paper GCMA avg *",
        "#e67e22",
        "6 4",
        PAPER_AVG_US.iter().map(|p| (p.0, p.2)).collect(),
        1,
    );
    series(
        "memset, same bytes",
        "#7f8c8d",
        "2 3",
        pts.iter()
            .filter_map(|(p, _, m)| Some((*p, m.as_ref()?.avg_us)))
            .collect(),
        2,
    );
    series(
        "this pool, avg",
        "#2471a3",
        "",
        pts.iter().map(|(p, g, _)| (*p, g.avg_us)).collect(),
        3,
    );
    for (p, g, _) in &pts {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#2471a3" stroke-width="1"/>"##,
            py(g.min_us),
            py(g.max_us),
            x = px(*p)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="11">bars: min–max</text><text x="{:.1}" y="{:.1}" font-size="11">* ARMv7 board, 2015</text>"#,
        W - R + 12.0,
        T + 100.0,
        W - R + 12.0,
        T + 116.0
    );
    s.push_str("</svg>\n");
    s
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else if us >= 1.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.0} ns", us * 1e3)
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pages: u64, grant_us: &[u64], memset_us: &[u64]) -> SizeRow {
        SizeRow {
            pages,
            grants: grant_us.iter().map(|u| Duration::from_micros(*u)).collect(),
            memset: memset_us
                .iter()
                .map(|u| Duration::from_micros(*u))
                .collect(),
        }
    }

    #[test]
    fn summary_and_table() {
        let s = Summary::of(&[Duration::from_micros(2), Duration::from_micros(4)]).unwrap();
        assert_eq!((s.n, s.min_us, s.avg_us, s.max_us), (2, 2.0, 3.0, 4.0));
        assert!(Summary::of(&[]).is_none());
        let t = render_table(&[row(512, &[10, 30], &[10, 10]), row(7, &[], &[1])]);
        let line = t
            .lines()
            .find(|l| l.trim_start().starts_with("512"))
            .unwrap();
        assert!(line.contains("10.0 / 20.0 / 30.0"), "{line}");
        assert!(line.contains("2.00x"), "{line}");
        assert!(line.contains("1162 / 2002"), "{line}");
        let line7 = t
            .lines()
            .find(|l| l.trim_start().starts_with("7 "))
            .unwrap();
        assert!(line7.contains(" - "), "{line7}");
    }

    #[test]
    fn svg_has_one_marker_per_point_and_balanced_tags() {
        let rows = [
            row(1, &[5, 6], &[1]),
            row(1024, &[900], &[800]),
            row(32000, &[20_000], &[19_000]),
        ];
        let svg = render_svg(&rows, "grant latency <demo>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // 6 paper CMA + 6 paper GCMA + 3 memset + 3 ours.
        assert_eq!(svg.matches("<circle").count(), 18);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("&lt;demo&gt;"));
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn memset_measures_every_run() {
        let v = measure_memset(4, 3);
        assert_eq!(v.len(), 3);
    }
}

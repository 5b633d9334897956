//! A dependency-free SVG line chart for simulator curves.

use colony_sim::MembershipResult;
use std::fmt::Write as _;

/// Two panels: fraction of nodes informed of a metadata update over time, and fraction of
/// live nodes that marked a killed member failed over time.
pub fn membership_svg(r: &MembershipResult) -> String {
    let mut svg = String::new();
    let (w, h) = (900.0, 360.0);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    panel(
        &mut svg,
        50.0,
        "dissemination of one update (ms)",
        &r.dissemination_curve,
    );
    panel(
        &mut svg,
        500.0,
        "failure detection of a killed member (ms)",
        &r.detection_curve,
    );
    let _ = write!(
        svg,
        r#"<text x="50" y="350">{} nodes, seed {}, trace {}</text></svg>"#,
        r.nodes, r.seed, r.trace_hash
    );
    svg
}

fn panel(svg: &mut String, x0: f64, title: &str, points: &[(f64, f64)]) {
    let (pw, ph, y0) = (380.0, 260.0, 40.0);
    let xmax = points.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let _ = write!(svg, r#"<text x="{x0}" y="25">{title}</text>"#);
    let _ = write!(
        svg,
        r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    for k in 0..=4 {
        let y = y0 + ph - ph * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}%</text>"#,
            x0 - 4.0,
            y + 4.0,
            k * 25
        );
        let x = x0 + pw * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{:.0}</text>"#,
            y0 + ph + 16.0,
            xmax * f64::from(k) / 4.0
        );
    }
    if points.is_empty() {
        return;
    }
    let mut path = String::new();
    let mut last_y = 0.0;
    for (i, (t, frac)) in points.iter().enumerate() {
        let x = x0 + pw * t / xmax;
        let y = y0 + ph - ph * frac;
        // A step function: the fraction holds until the next node is informed.
        if i == 0 {
            let _ = write!(path, "M{x:.1},{y:.1}");
        } else {
            let _ = write!(path, " L{x:.1},{last_y:.1} L{x:.1},{y:.1}");
        }
        last_y = y;
    }
    let _ = write!(
        svg,
        r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##
    );
}

/// One panel per scenario: goodput per second ÷ capacity for each kind of client.
pub fn overload_svg(reports: &[colony_sim::overload::OverloadReport]) -> String {
    let mut scenarios: Vec<&str> = reports.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    let (pw, ph) = (380.0, 220.0);
    let w = 60.0 + (pw + 60.0) * scenarios.len().max(1) as f64;
    let h = 330.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, scenario) in scenarios.iter().enumerate() {
        let x0 = 50.0 + (pw + 60.0) * i as f64;
        let y0 = 40.0;
        let _ = write!(
            svg,
            r#"<text x="{x0}" y="25">{scenario}: goodput ÷ capacity per second</text>"#
        );
        let _ = write!(
            svg,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        let runs: Vec<_> = reports
            .iter()
            .filter(|r| r.scenario.as_str() == *scenario)
            .collect();
        let seconds = runs
            .iter()
            .map(|r| r.goodput_per_s.len())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        for k in 0..=4 {
            let y = y0 + ph - ph * f64::from(k) / 4.0;
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{:.2}</text>"#,
                x0 - 4.0,
                y + 4.0,
                0.3 * f64::from(k)
            );
            let x = x0 + pw * f64::from(k) / 4.0;
            let _ = write!(
                svg,
                r#"<text x="{x}" y="{}" text-anchor="middle">{:.0}s</text>"#,
                y0 + ph + 16.0,
                seconds * f64::from(k) / 4.0
            );
        }
        for (j, run) in runs.iter().enumerate() {
            let color = if run.clients.as_str() == "naive" {
                "#d62728"
            } else {
                "#2ca02c"
            };
            let mut path = String::new();
            for (t, goodput) in run.goodput_per_s.iter().enumerate() {
                let ratio = (*goodput as f64 / run.capacity_rps.max(1.0)).min(1.2);
                let x = x0 + pw * t as f64 / seconds;
                let y = y0 + ph - ph * ratio / 1.2;
                let _ = write!(path, "{}{x:.1},{y:.1}", if t == 0 { "M" } else { " L" });
            }
            let _ = write!(
                svg,
                r##"<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>"##
            );
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
                x0 + 10.0,
                y0 + ph + 36.0 + 14.0 * j as f64,
                run.clients.as_str()
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

//! The report's plot: bar charts of the parts' results (SVG, no dependencies).

/// The TLS comparison's panels: xlb's https proxy and nginx, one bar each per case.
pub fn tls_panels(tls: &serde_json::Value) -> Vec<(&'static str, Vec<(String, f64)>)> {
    let bars = |cases: &[(&str, &str)]| -> Vec<(String, f64)> {
        cases
            .iter()
            .flat_map(|(key, what)| {
                [("xlb https proxy", "xlb"), ("nginx", "nginx")].map(|(label, peer)| {
                    (
                        format!("{label}{what}"),
                        tls[peer][*key].as_f64().unwrap_or(0.0),
                    )
                })
            })
            .collect()
    };
    vec![
        (
            "TLS: new handshakes per second, no resumption (higher is better)",
            bars(&[("handshakes_per_s", "")]),
        ),
        (
            "TLS: keep-alive requests per second (higher is better)",
            bars(&[
                ("h1_requests_per_s", ", HTTP/1.1"),
                ("h2_requests_per_s", ", h2"),
            ]),
        ),
        (
            "TLS: keep-alive p99 latency, ms (lower is better)",
            bars(&[("h1_p99_ms", ", HTTP/1.1"), ("h2_p99_ms", ", h2")]),
        ),
    ]
}

/// A horizontal bar chart (SVG, no dependencies): one panel per series.
fn svg(panels: &[(&str, Vec<(String, f64)>)]) -> String {
    let (w, bar_h, left, gap) = (760.0, 18.0, 230.0, 36.0);
    let mut y = 20.0;
    let mut body = String::new();
    for (title, rows) in panels {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{title}</text>\n"
        ));
        y += 10.0;
        let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max).max(1e-9);
        for (label, v) in rows {
            let len = (w - left - 90.0) * v / max;
            body.push_str(&format!(
                "<text x=\"10\" y=\"{}\">{label}</text><rect x=\"{left}\" y=\"{}\" width=\"{len:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\">{}</text>\n",
                y + 13.0,
                y,
                bar_h - 4.0,
                if label.starts_with("xlb") { "#2b7bb9" } else { "#999" },
                left + len + 6.0,
                y + 13.0,
                if *v < 100.0 { format!("{v:.1}") } else { format!("{v:.0}") },
            ));
            y += bar_h;
        }
        y += gap;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{y}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Writes the report to `out` (JSON) and the plot of `panels` beside it (SVG, same name).
pub fn write(
    out: &std::path::Path,
    report: &serde_json::Value,
    panels: &[(&str, Vec<(String, f64)>)],
) -> anyhow::Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)?;
    let plot = svg(panels);
    let svg_path = out.with_extension("svg");
    std::fs::write(&svg_path, plot)?;
    println!("\nwritten to {} and {}", out.display(), svg_path.display());
    Ok(())
}

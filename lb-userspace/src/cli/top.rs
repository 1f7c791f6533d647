//! `xlb top`: rates per service, backend and drop reason, from two `stats` samples an
//! interval apart, sorted by traffic. Interactive (a terminal, no `--iterations`): the
//! screen is redrawn every interval. With `--iterations N` it prints N frames of
//! exactly `--height` lines, none longer than `--width`, and exits (for scripts and
//! tests).

use std::{collections::HashMap, io::Write, path::Path, time::Duration};

use anyhow::Result;

use crate::api::{self, Request, reply::Stats};

pub struct TopOptions {
    /// `--json`: each sample as one JSON line (`stats`' reply), no frames.
    pub json: bool,
    pub interval: Duration,
    pub iterations: Option<u64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
}

const DEFAULT_SIZE: (usize, usize) = (100, 30);
const MIN_WIDTH: usize = 40;
const MIN_HEIGHT: usize = 8;

/// The terminal's (columns, rows), if stdout is one.
fn terminal_size() -> Option<(usize, usize)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// 1234567 -> "1.2M" (SI, for rates and totals in narrow columns).
pub fn si(v: f64) -> String {
    let (v, unit) = match v.abs() {
        x if x >= 1e12 => (v / 1e12, "T"),
        x if x >= 1e9 => (v / 1e9, "G"),
        x if x >= 1e6 => (v / 1e6, "M"),
        x if x >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    if unit.is_empty() && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// A row of the services section.
struct Row {
    name: String,
    rate: f64,
    bytes_rate: f64,
    flow_rate: f64,
    packets: u64,
    note: String,
    backends: Vec<Row>,
}

fn rate(cur: u64, prev: Option<u64>, dt: f64) -> f64 {
    cur.saturating_sub(prev.unwrap_or(cur)) as f64 / dt
}

fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then(b.packets.cmp(&a.packets))
            .then(a.name.cmp(&b.name))
    });
}

/// One frame: exactly `height` lines, each at most `width` characters.
pub fn render(prev: &Stats, cur: &Stats, dt: f64, width: usize, height: usize) -> Vec<String> {
    let dt = dt.max(1e-3);
    let before = counters(prev);
    let get = |k: String| before.get(&k).copied();
    let services = service_rows(cur, &get, dt);
    let (verdict_rates, drops) = reason_rates(cur, &get, dt);
    // Laid out at least MIN_WIDTH x MIN_HEIGHT, then cut to exactly what was asked.
    let layout = (width.max(MIN_WIDTH), height.max(MIN_HEIGHT));
    let mut lines = frame(
        &services,
        &verdict_rates,
        &drops,
        cur,
        dt,
        layout.0,
        layout.1,
    );
    lines.truncate(height);
    lines
        .into_iter()
        .map(|l| l.chars().take(width).collect())
        .collect()
}

/// The counters of a sample by key (`s SERVICE`, `b SERVICE BACKEND`, `r REASON
/// VERDICT`, ...), to take rates against.
fn counters(prev: &Stats) -> HashMap<String, u64> {
    let mut before: HashMap<String, u64> = HashMap::new();
    for s in &prev.traffic.services {
        let name = &s.service;
        before.insert(format!("s {name}"), s.packets);
        before.insert(format!("sb {name}"), s.bytes);
        before.insert(format!("sf {name}"), s.new_flows);
        for b in &s.backends {
            let bn = &b.backend;
            before.insert(format!("b {name} {bn}"), b.packets);
            before.insert(format!("bb {name} {bn}"), b.bytes);
            before.insert(format!("bf {name} {bn}"), b.new_flows);
        }
    }
    for r in &prev.reasons {
        before.insert(format!("r {} {}", r.reason, r.verdict), r.packets);
    }
    before
}

/// The services with their backends, each with its rates, busiest first.
fn service_rows(cur: &Stats, get: &dyn Fn(String) -> Option<u64>, dt: f64) -> Vec<Row> {
    let mut services: Vec<Row> = Vec::new();
    for s in &cur.traffic.services {
        let name = s.service.clone();
        let mut backends: Vec<Row> = s
            .backends
            .iter()
            .map(|b| {
                let bn = &b.backend;
                Row {
                    name: bn.to_string(),
                    rate: rate(b.packets, get(format!("b {name} {bn}")), dt),
                    bytes_rate: rate(b.bytes, get(format!("bb {name} {bn}")), dt),
                    flow_rate: rate(b.new_flows, get(format!("bf {name} {bn}")), dt),
                    packets: b.packets,
                    note: b.health.clone(),
                    backends: Vec::new(),
                }
            })
            .collect();
        sort_rows(&mut backends);
        services.push(Row {
            rate: rate(s.packets, get(format!("s {name}")), dt),
            bytes_rate: rate(s.bytes, get(format!("sb {name}")), dt),
            flow_rate: rate(s.new_flows, get(format!("sf {name}")), dt),
            packets: s.packets,
            note: s.mode.to_string(),
            name,
            backends,
        });
    }
    sort_rows(&mut services);
    services
}

/// A drop reason's row: (reason, packets/s, packets, bytes).
type DropRow = (String, f64, u64, u64);

/// Packet rates by verdict, and the drop reasons seen, busiest first.
fn reason_rates(
    cur: &Stats,
    get: &dyn Fn(String) -> Option<u64>,
    dt: f64,
) -> (Vec<(String, f64)>, Vec<DropRow>) {
    let mut verdict_rates: Vec<(String, f64)> = Vec::new();
    let mut drops: Vec<DropRow> = Vec::new();
    for r in &cur.reasons {
        let (reason, verdict) = (r.reason.as_str(), r.verdict.as_str());
        let packets = r.packets;
        let rt = rate(packets, get(format!("r {reason} {verdict}")), dt);
        match verdict_rates.iter_mut().find(|(v, _)| v == verdict) {
            Some((_, x)) => *x += rt,
            None => verdict_rates.push((verdict.to_string(), rt)),
        }
        if verdict == "drop" && packets > 0 {
            drops.push((reason.to_string(), rt, packets, r.bytes));
        }
    }
    drops.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
    (verdict_rates, drops)
}

/// The frame's lines: a header, the services and the drops sharing what is left.
fn frame(
    services: &[Row],
    verdict_rates: &[(String, f64)],
    drops: &[DropRow],
    cur: &Stats,
    dt: f64,
    width: usize,
    height: usize,
) -> Vec<String> {
    // Columns: name, then five right-aligned 9-wide columns.
    let num = 9;
    let name_w = width.saturating_sub(5 * (num + 1)).max(12);
    let line = |name: &str, cols: [&str; 5]| {
        let mut l = format!("{:<name_w$.name_w$}", name);
        for c in cols {
            l.push(' ');
            l.push_str(&format!("{c:>num$.num$}"));
        }
        l
    };

    let mut out: Vec<String> = Vec::new();
    let flows = &cur.traffic.flows;
    out.push(format!(
        "xlb top - every {:.1} s - {} services - flows {}/{}",
        dt,
        services.len(),
        flows.forward + flows.reply,
        flows.capacity
    ));
    out.push(
        verdict_rates
            .iter()
            .map(|(v, r)| format!("{v} {} pkt/s", si(*r)))
            .collect::<Vec<_>>()
            .join("   "),
    );
    out.push(String::new());

    // Space: what the headers take, then services and drops share the rest.
    let fixed = out.len() + 3;
    let room = height.saturating_sub(fixed);
    let service_lines: usize = services.iter().map(|s| 1 + s.backends.len()).sum();
    let drop_lines = drops.len();
    let drop_room = drop_lines
        .min((room / 3).max(1))
        .max(room.saturating_sub(service_lines));
    let drop_room = drop_room.min(drop_lines.max(1)).min(room);
    let svc_room = room - drop_room.min(room);

    out.push(line(
        "SERVICE / BACKEND",
        ["PKT/S", "BYTES/S", "FLOWS/S", "PACKETS", "MODE/HLTH"],
    ));
    let mut svc: Vec<String> = Vec::new();
    for s in services {
        svc.push(line(
            &s.name,
            [
                &si(s.rate),
                &si(s.bytes_rate),
                &si(s.flow_rate),
                &si(s.packets as f64),
                &s.note,
            ],
        ));
        for b in &s.backends {
            svc.push(line(
                &format!("  {}", b.name),
                [
                    &si(b.rate),
                    &si(b.bytes_rate),
                    &si(b.flow_rate),
                    &si(b.packets as f64),
                    &b.note,
                ],
            ));
        }
    }
    if services.is_empty() && svc_room > 0 {
        svc.push("  (no services)".to_string());
    }
    fit(&mut svc, svc_room);
    out.extend(svc);
    out.push(String::new());
    out.push(line("DROP REASON", ["PKT/S", "", "", "PACKETS", "BYTES"]));
    let mut dl: Vec<String> = drops
        .iter()
        .map(|(r, rt, p, b)| line(r, [&si(*rt), "", "", &si(*p as f64), &si(*b as f64)]))
        .collect();
    if dl.is_empty() && drop_room > 0 {
        dl.push("  (no drops)".to_string());
    }
    fit(&mut dl, drop_room);
    out.extend(dl);

    out.truncate(height);
    while out.len() < height {
        out.push(String::new());
    }
    out.into_iter()
        .map(|l| l.trim_end().chars().take(width).collect())
        .collect()
}

/// Cuts `lines` to `room`, the last kept line saying how many were left out.
fn fit(lines: &mut Vec<String>, room: usize) {
    if lines.len() > room {
        let hidden = lines.len() - room + 1;
        lines.truncate(room.saturating_sub(1));
        if room > 0 {
            lines.push(format!("  ... {hidden} more"));
        }
    }
}

pub fn run(socket: &Path, opts: TopOptions) -> Result<()> {
    let term = terminal_size();
    let interactive = opts.iterations.is_none() && term.is_some();
    let mut prev: Stats = api::call(socket, &Request::Stats)?;
    let mut t_prev = std::time::Instant::now();
    let mut frames = 0u64;
    let stdout = std::io::stdout();
    loop {
        std::thread::sleep(opts.interval);
        let cur: Stats = api::call(socket, &Request::Stats)?;
        let now = std::time::Instant::now();
        if opts.json {
            let mut out = stdout.lock();
            writeln!(out, "{}", serde_json::to_string(&cur)?)?;
            out.flush()?;
            frames += 1;
            if opts.iterations.is_some_and(|n| frames >= n) {
                return Ok(());
            }
            continue;
        }
        let (tw, th) = if interactive {
            terminal_size().unwrap_or(DEFAULT_SIZE)
        } else {
            term.unwrap_or(DEFAULT_SIZE)
        };
        let w = opts.width.unwrap_or(tw);
        // Interactive: one line fewer, so the cursor's line does not scroll the frame.
        let h = opts.height.unwrap_or(if interactive { th - 1 } else { th });
        let lines = render(&prev, &cur, (now - t_prev).as_secs_f64(), w, h);
        let mut out = stdout.lock();
        if interactive {
            write!(out, "\x1b[H\x1b[2J")?;
        }
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        prev = cur;
        t_prev = now;
        frames += 1;
        if opts.iterations.is_some_and(|n| frames >= n) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(web1: u64, web2: u64, drops: u64) -> Stats {
        serde_json::from_value(json!({
            "verdicts": {},
            "rules": 0,
            "reasons": [
                {"reason": "prefix_deny", "verdict": "drop", "malformed": false, "packets": drops, "bytes": drops * 60},
                {"reason": "balanced", "verdict": "tx", "malformed": false, "packets": web1 + web2, "bytes": 0},
            ],
            "services": [
                {"service": "198.51.100.10:80/tcp", "mode": "nat", "packets": web1 + web2,
                 "bytes": (web1 + web2) * 100, "new_flows": 2, "backends": [
                    {"backend": "203.0.113.11:8080", "packets": web1, "bytes": web1 * 100, "new_flows": 1, "health": "unchecked"},
                    {"backend": "203.0.113.12:8080", "packets": web2, "bytes": web2 * 100, "new_flows": 1, "health": "unchecked"},
                ]},
            ],
            "flows": {"forward": 2, "reply": 2, "capacity": 262144},
        }))
        .unwrap()
    }

    #[test]
    fn frames_have_the_asked_size_and_sort_by_traffic() {
        let lines = render(&sample(0, 0, 0), &sample(10, 30, 5), 1.0, 80, 20);
        assert_eq!(lines.len(), 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 80));
        let web2 = lines
            .iter()
            .position(|l| l.contains("203.0.113.12"))
            .unwrap();
        let web1 = lines
            .iter()
            .position(|l| l.contains("203.0.113.11"))
            .unwrap();
        assert!(
            web2 < web1,
            "the busier backend first:\n{}",
            lines.join("\n")
        );
        let deny = lines.iter().find(|l| l.starts_with("prefix_deny")).unwrap();
        assert!(deny.split_whitespace().nth(1) == Some("5"), "{deny}");
        assert!(lines[1].contains("drop 5 pkt/s"), "{}", lines[1]);
    }

    #[test]
    fn small_frames_cut_sections() {
        let lines = render(&sample(0, 0, 0), &sample(1, 1, 1), 1.0, 40, 8);
        assert_eq!(lines.len(), 8);
        assert!(lines.iter().all(|l| l.chars().count() <= 40));
        // Smaller than the layout's minimum: still exactly the size asked for.
        let lines = render(&sample(0, 0, 0), &sample(1, 1, 1), 1.0, 20, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
    }

    #[test]
    fn si_units() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2.5e6), "2.5M");
    }
}

//! testssl.sh against xlb's listener.

use std::{path::Path, time::Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use xlb_tests::netns::Netns;

use super::XLB_PORT;

/// testssl.sh against xlb's listener: (findings, those of severity LOW or higher).
fn testssl(ns: &Netns, dir: &Path, ca: &Path) -> Result<(usize, Vec<String>)> {
    let json = dir.join("testssl.json");
    let _ = std::fs::remove_file(&json);
    let out = ns
        .cmd(&[
            "testssl",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--add-ca",
            &ca.to_string_lossy(),
            "--ip",
            "127.0.0.1",
            "--jsonfile",
            &json.to_string_lossy(),
            &format!("https://bench.example:{XLB_PORT}/"),
        ])
        .output()
        .context("running testssl")?;
    std::fs::write(dir.join("testssl.txt"), &out.stdout)?;
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!(
            "testssl wrote no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let findings: Vec<Value> = serde_json::from_str(&text).context("testssl JSON")?;
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| {
            matches!(
                f["severity"].as_str(),
                Some("LOW" | "MEDIUM" | "HIGH" | "CRITICAL")
            )
        })
        .map(|f| {
            format!(
                "{} {}: {}",
                f["severity"].as_str().unwrap_or(""),
                f["id"].as_str().unwrap_or(""),
                f["finding"].as_str().unwrap_or("")
            )
        })
        .collect();
    Ok((findings.len(), bad))
}

/// testssl.sh's findings against xlb's listener, printed, into `results`.
pub fn report(
    ns: &Netns,
    dir: &Path,
    ca: &Path,
    results: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    println!("\ntestssl.sh against xlb's listener (takes a few minutes) ...");
    let t = Instant::now();
    let (n, flagged) = testssl(ns, dir, ca)?;
    let (low, bad): (Vec<String>, Vec<String>) =
        flagged.into_iter().partition(|f| f.starts_with("LOW "));
    println!(
        "testssl.sh: {n} findings, {} of severity MEDIUM or higher ({:.0} s){}",
        bad.len(),
        t.elapsed().as_secs_f64(),
        if bad.is_empty() { ": none" } else { ":" }
    );
    for b in bad.iter().chain(&low) {
        println!("  {b}");
    }
    results.insert("testssl_low".into(), json!(low));
    results.insert("testssl_findings".into(), json!(n));
    results.insert("testssl_medium_or_higher".into(), json!(bad));
    Ok(())
}

//! The layer rule, checked: every module of a layer imports (`crate::...`) only from
//! the layers below it, and no two files of one layer import each other in a circle.
//! The order is `LAYERS` (lowest first); a new top-level module must be added there.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The layers, lowest first.
const LAYERS: [&str; 10] = [
    "model", "kernel", "config", "store", "api", "health", "metrics", "https", "daemon", "cli",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under src (`daemon/edge.rs` -> ["daemon", "edge"]).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and string contents (so that a doc comment or
/// a message naming `crate::x` is not an import).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The paths that follow `prefix` (`crate::`, `super::`) in `code`, use groups
/// expanded (`crate::{a::X, b::{c, d}}` gives `a::X`, `b::c`, `b::d`), each cut to its
/// leading module names (lowercase words: `a`, `b::c`, ...).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = &code[..i];
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut leaves = Vec::new();
        tree(&code[i + prefix.len()..], String::new(), &mut leaves);
        out.extend(leaves.iter().map(|l| modules(l)).filter(|m| !m.is_empty()));
    }
    out
}

/// The leaves of the use tree at the start of `s`, each prefixed with `at`.
fn tree(s: &str, at: String, leaves: &mut Vec<String>) -> usize {
    let mut path = at;
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        match b[i] {
            b'{' => {
                i += 1;
                loop {
                    i += tree(&s[i..], path.clone(), leaves);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b'}') => return i + 1,
                        _ => return i,
                    }
                }
            }
            b',' | b'}' | b';' | b'(' | b')' | b'<' | b'>' | b'=' | b'!' => break,
            c if c.is_ascii_whitespace() && !path.ends_with("::") && !path.is_empty() => break,
            _ => path.push(b[i] as char),
        }
        i += 1;
    }
    leaves.push(path);
    i
}

/// The leading module names of a path (`a::b::X` gives `a`, `b`).
fn modules(path: &str) -> Vec<String> {
    path.split("::")
        .map(|p| p.trim())
        .take_while(|p| {
            !p.is_empty()
                && *p != "self"
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect()
}

/// What a file of module `m` imports: its `crate::` paths, and its `super::` paths
/// resolved against `m` (`is_dir`: the file is a `mod.rs`).
fn imported(m: &[String], is_dir: bool, code: &str) -> BTreeSet<Vec<String>> {
    let mut out: BTreeSet<Vec<String>> = paths_after(code, "crate::").into_iter().collect();
    let parent: Vec<String> = if is_dir {
        m[..m.len().saturating_sub(1)].to_vec()
    } else {
        m[..m.len() - 1].to_vec()
    };
    for p in paths_after(code, "super::") {
        let mut full = parent.clone();
        full.extend(p);
        if !full.is_empty() {
            out.insert(full);
        }
    }
    out
}

/// The source files of the crate with the module paths they import.
fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let m = module_of(&src, &f);
        if m.is_empty() || m == ["main"] || m == ["lib"] || m == ["layers"] {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let is_dir = f.file_name().is_some_and(|n| n == "mod.rs");
        out.insert(m.clone(), imported(&m, is_dir, &code(&text)));
    }
    out
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The layer rule over `imports`: the imports that go up a layer, and the top-level
/// modules that are not layers.
fn upward(imports: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (m, used) in imports {
        let Some(own) = rank(&m[0]) else {
            bad.push(format!("{} is not a layer: add it to LAYERS", m[0]));
            continue;
        };
        for u in used {
            match rank(&u[0]) {
                Some(r) if r <= own => {}
                Some(_) => bad.push(format!(
                    "{} imports crate::{} (a higher layer)",
                    m.join("::"),
                    u.join("::")
                )),
                None => bad.push(format!(
                    "{} imports crate::{}, which is not a layer",
                    m.join("::"),
                    u[0]
                )),
            }
        }
    }
    bad
}

/// A circle among the files of one layer (through `crate::layer::file` imports), if any.
fn circle(imports: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    // Edges between files of one layer: `layer::a` -> `layer::b` (the layer's own
    // mod.rs is its front door, re-exporting its files: not counted).
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, used) in imports {
        if m.len() < 2 {
            continue;
        }
        for u in used {
            if u.len() >= 2 && u[0] == m[0] && u[1] != m[1] {
                edges
                    .entry(format!("{}::{}", m[0], m[1]))
                    .or_default()
                    .insert(format!("{}::{}", u[0], u[1]));
            }
        }
    }
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, &edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn every_import_goes_down_a_layer() {
    let imports = imports();
    assert!(imports.len() > 40, "the sources were not found");
    let bad = upward(&imports);
    assert!(
        bad.is_empty(),
        "the layer rule is broken:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_files_of_a_layer_import_each_other_in_a_circle() {
    if let Some(c) = circle(&imports()) {
        panic!("a circle of imports: {}", c.join(" -> "));
    }
}

#[test]
fn the_checks_see_what_they_must() {
    let code = code(
        "use crate::{api::reply::X, model::{rules::A, services}};\n\
         use super::{Edge, reload::Https};\n\
         let a = crate::metrics::global(); // crate::cli::x\n\
         let s = \"crate::daemon\";",
    );
    let got = imported(&["daemon".to_string(), "running".to_string()], false, &code);
    let want: BTreeSet<Vec<String>> = [
        &["api", "reply"][..],
        &["model", "rules"],
        &["model", "services"],
        &["metrics", "global"],
        &["daemon", "reload"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
    // A back-import is found, and a circle.
    let mut imports = BTreeMap::new();
    imports.insert(
        vec!["model".to_string(), "rules".to_string()],
        BTreeSet::from([vec!["daemon".to_string(), "edge".to_string()]]),
    );
    assert_eq!(upward(&imports).len(), 1);
    imports.clear();
    for (a, b) in [("a", "b"), ("b", "a")] {
        imports.insert(
            vec!["daemon".to_string(), a.to_string()],
            BTreeSet::from([vec!["daemon".to_string(), b.to_string()]]),
        );
    }
    assert!(circle(&imports).is_some());
}

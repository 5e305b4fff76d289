//! The dispatcher's layering, checked on its own source: no import cycle
//! among its top-level modules, and no code outside the launchers' folder
//! and the start-up wiring that asks which launcher or backend runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments (line comments and doc comments;
/// the crate uses no block comments), so prose naming a module is no edge.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read source")
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`None` for lib.rs).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).expect("below src");
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib").then_some(name)
}

#[test]
fn no_import_cycle_among_top_level_modules() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let reference = regex::Regex::new(r"crate::([a-z_]+)").expect("regex");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        let Some(from) = module_of(file) else {
            continue;
        };
        modules.insert(from.clone());
        for cap in reference.captures_iter(&code(file)) {
            let to = cap[1].to_owned();
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Only edges between modules count (crate-root items such as
    // `error_chain` are no module).
    for targets in edges.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    assert!(modules.contains("engine") && modules.contains("launcher"));
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[i..].join(" -> "));
        }
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn only_the_wiring_and_the_launchers_know_which_backend_runs() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let kind_check =
        regex::Regex::new(r"LauncherKind|Backend::|\.backend\b|\.launcher ==").expect("regex");
    let mut offenders = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src()).expect("below src");
        if rel.starts_with("launcher") || rel == Path::new("backends.rs") {
            continue;
        }
        if kind_check.is_match(&code(file)) {
            offenders.push(rel.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "backend or launcher kind checked in {offenders:?}"
    );
}

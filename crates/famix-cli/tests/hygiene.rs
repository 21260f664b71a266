//! Source-level rules of the code base that a compiler does not check: the library
//! never reaches into the command line, never prints, depends on no command-line or
//! server crate, its modules import each other in one direction only, and the sources
//! cite the design document that is in the repository (docs/design.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn library_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../famix/src")
}

fn library_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&library_src(), &mut files);
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// Source text without `//` comments.
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_library_does_not_depend_on_the_command_line() {
    let files = library_sources();
    assert!(files.len() > 20, "found only {} library files", files.len());
    for (p, text) in &files {
        for (i, line) in code(text).lines().enumerate() {
            let bad = ["cli::", "clap", "indicatif", "anyhow", "println!", "eprintln!", "print!(", "process::exit"]
                .iter()
                .find(|b| line.contains(*b));
            assert!(bad.is_none(), "{}:{}: library code uses {:?}: {line}", p.display(), i + 1, bad.unwrap());
        }
    }
    let manifest = std::fs::read_to_string(library_src().join("../Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for name in ["clap", "indicatif", "anyhow", "axum", "tokio", "prometheus", "hyper", "tower"] {
        assert!(!deps.lines().any(|l| l.trim_start().starts_with(name)), "the library depends on {name}");
    }
}

/// The library's top-level modules and the modules each one imports (`crate::x`).
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = library_src();
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    };
    let files = library_sources();
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| top(p)).filter(|m| m != "lib").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, text) in &files {
        let from = top(p);
        if from == "lib" {
            continue;
        }
        let c = code(text);
        let mut used = BTreeSet::new();
        for part in c.split("crate::").skip(1) {
            // `crate::x::...` or `crate::{x, y::z}`.
            let head = if let Some(rest) = part.strip_prefix('{') { rest.split('}').next().unwrap_or("") } else { part };
            for seg in head.split(',') {
                let name: String =
                    seg.trim().chars().take_while(|ch| ch.is_ascii_lowercase() || *ch == '_' || ch.is_ascii_digit()).collect();
                if modules.contains(&name) && name != from {
                    used.insert(name);
                }
                if !part.starts_with('{') {
                    break;
                }
            }
        }
        graph.entry(from).or_default().extend(used);
    }
    graph
}

/// No module imports a module that (directly or through others) imports it back: the
/// import graph of the library's top-level modules is acyclic, so the folders read
/// bottom-up. (Checked on the source text: every `crate::<module>` path counts.)
#[test]
fn library_modules_import_downwards_only() {
    let graph = import_graph();
    assert!(graph.len() > 10, "found only {} modules", graph.len());
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        seen
    };
    let mut loops = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            if reach(d).contains(m) {
                loops.push(format!("{m} → {d} → … → {m}"));
            }
        }
    }
    assert!(loops.is_empty(), "modules that import each other back:\n{}", loops.join("\n"));
}

#[test]
fn sources_cite_documents_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(root.join("docs/design.md").is_file());
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(concat!("SP", "EC")), "{} cites a document that is not in the repository", p.display());
    }
}

//! Source-level rules of the code base that a compiler does not check: the library
//! never reaches into the command line, never prints, depends on no command-line or
//! server crate, its modules import each other in one direction only, and the sources
//! cite the design document that is in the repository (docs/src/design.md), and its
//! public functions are the ones used from outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::{files_with_extension, repo_root};

fn library_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../famix/src")
}

fn library_sources() -> Vec<(PathBuf, String)> {
    files_with_extension(&library_src(), "rs").into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
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
    assert!(root.join("docs/src/design.md").is_file());
    for p in files_with_extension(&root.join("crates"), "rs") {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(concat!("SP", "EC")), "{} cites a document that is not in the repository", p.display());
    }
}

/// `name version` → the feature sets of every package `cargo tree` resolves for the
/// packages `select` names (normal and build dependencies, unified as one build unifies
/// them; a package built for the host and for the target has two sets).
fn resolved_features(root: &Path, select: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-e", "normal,build", "--prefix", "none", "-f", "{p}|{f}"])
        .args(select)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree {select:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, f) in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim_end_matches(" (*)").split_once('|')) {
        let mut words = p.split_whitespace();
        let key = format!("{} {}", words.next().unwrap_or(""), words.next().unwrap_or(""));
        sets.entry(key).or_default().insert(f.to_string());
    }
    sets
}

/// The Python package (built alone by maturin) builds torch-sys, tch and famix with
/// exactly the features the main build (the default members: the library and the
/// command) builds them with — its Cargo.toml aligns the few that the command's crates
/// turn on — so cargo reuses the main build's artifacts instead of compiling libtorch's
/// bindings and the library again.
#[test]
fn the_python_package_builds_the_library_with_the_main_features() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let main = resolved_features(&root, &[]);
    let py = resolved_features(&root, &["-p", "famix-py"]);
    assert!(py.keys().any(|k| k.starts_with("famix v")) && py.keys().any(|k| k.starts_with("tch v")));
    let differ: Vec<String> = py
        .iter()
        .filter_map(|(p, f)| main.get(p).filter(|m| *m != f).map(|m| format!("{p}: {f:?} for famix-py, {m:?} in the main build")))
        .collect();
    assert!(differ.is_empty(), "align these in crates/famix-py/Cargo.toml:\n{}", differ.join("\n"));
}

/// The Rust sources that use the library from outside, concatenated: the command (with
/// its tests and examples), the Python package, the demo's world, the library's own
/// integration tests and example, the fuzz targets.
fn outside_sources() -> String {
    let crates = repo_root().join("crates");
    let users =
        ["famix-cli/src", "famix-cli/tests", "famix-cli/examples", "famix-py/src", "famix-synth/src", "famix/tests", "famix/examples"]
            .map(|d| crates.join(d));
    let mut outside = String::new();
    for dir in users.into_iter().chain([repo_root().join("fuzz")]) {
        for f in files_with_extension(&dir, "rs") {
            outside.push_str(&std::fs::read_to_string(f).unwrap());
            outside.push('\n');
        }
    }
    outside
}

/// The library's public functions are its API: each `pub fn` is called from outside
/// the library (the command, its tests and examples, the Python package, the library's own
/// integration tests, its example, the fuzz targets) or named in the library's documentation as part of
/// the method (an intra-doc link); everything else is `pub(crate)`. A public function
/// nobody outside uses fails here.
#[test]
fn every_public_library_function_is_used_outside_the_library() {
    let outside = outside_sources();
    let words: BTreeSet<&str> = outside.split(|c: char| !(c.is_alphanumeric() || c == '_')).collect();
    let sources = library_sources();
    let linked = |name: &str| sources.iter().any(|(_, t)| t.contains(&format!("{name}`]")));
    let mut unused = Vec::new();
    for (path, text) in &sources {
        for line in code(text).lines() {
            let Some(rest) = line.trim_start().strip_prefix("pub fn ") else { continue };
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !words.contains(name.as_str()) && !linked(&name) {
                unused.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(unused.is_empty(), "public library functions used nowhere outside the library (make them pub(crate)): {unused:#?}");
}

/// Library files allowed to raise plain-message errors (`bail!`, `format_err!`,
/// `Error::msg`), and why: every other problem is a typed error a caller can branch on.
const PLAIN_MESSAGE_FILES: &[(&str, &str)] = &[
    ("io/pickle.rs", "a parser: load_file/load_bytes/import_reference make its errors Unreadable"),
    ("io/archive.rs", "a parser: load_file/load_bytes make its errors Unreadable"),
    ("model/checkpoint.rs", "header and shape checks: checkpoint::load makes them Unreadable"),
    ("clip/resnet.rs", "architecture inference: the loaders make its errors Unreadable"),
    ("clip/text.rs", "architecture inference: Clip::load makes its errors Unreadable"),
    ("clip/download.rs", "the network (HTTP failures, a download that does not verify)"),
    ("engine/onnxruntime.rs", "the environment (ONNX Runtime's shared library and its own errors)"),
    ("device.rs", "the environment (libtorch refusing a global mode)"),
    ("report/plots.rs", "the drawing backend's own errors"),
    ("error.rs", "the definitions"),
];

/// Every input or setting problem the library reports is a typed error: plain messages
/// appear only in the files above (each with its reason) or as `internal:` invariants.
#[test]
fn library_errors_are_typed_outside_parsers_and_the_environment() {
    let mut plain = Vec::new();
    for (path, text) in library_sources() {
        let rel = path.strip_prefix(library_src()).unwrap().to_string_lossy().replace('\\', "/");
        if PLAIN_MESSAGE_FILES.iter().any(|(f, _)| *f == rel) {
            continue;
        }
        // Unit tests (after `#[cfg(test)]`) may use any error.
        let code = code(text.split("#[cfg(test)]").next().unwrap());
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if ["bail!(", "format_err!(", "Error::msg(", "Error::Msg("].iter().any(|m| line.contains(m)) {
                // The message may start on the next line (a long format string).
                let site = lines[i..(i + 2).min(lines.len())].join(" ");
                if !site.contains("\"internal: ") {
                    plain.push(format!("{rel}:{}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    assert!(plain.is_empty(), "plain-message errors outside parsers and the environment (use a typed Error): {plain:#?}");
}

/// Every public module of the library is reached from outside it (the command, the
/// Python package, the library's tests and examples, the fuzz targets); the others
/// are `pub(crate)`, so the public API is the one the front ends and users need.
#[test]
fn every_public_library_module_is_used_outside_the_library() {
    let outside: String = code(&outside_sources()).split_whitespace().collect();
    // (parent module, declared public module) of every `pub mod`: a module inside a
    // `pub(crate)` one is private whatever it says.
    let mut declared = Vec::new();
    for (path, text) in library_sources() {
        let rel = path.strip_prefix(library_src()).unwrap().to_string_lossy().replace('\\', "/");
        // The module path of the file's own module: "" for lib.rs, "clip" for clip/mod.rs.
        let parent = rel.trim_end_matches(".rs").trim_end_matches("/mod").trim_end_matches("lib").replace('/', "::");
        for line in code(&text).lines() {
            if let Some(name) = line.trim().strip_prefix("pub mod ").and_then(|r| r.strip_suffix(';')) {
                declared.push((parent.clone(), name.to_string()));
            }
        }
    }
    let public: BTreeSet<String> = declared.iter().map(|(p, n)| if p.is_empty() { n.clone() } else { format!("{p}::{n}") }).collect();
    let mut unused = Vec::new();
    for (parent, name) in &declared {
        {
            let prefixes = parent.match_indices("::").map(|(i, _)| &parent[..i]).chain([parent.as_str()]);
            if !parent.is_empty() && !prefixes.into_iter().all(|p| public.contains(p)) {
                continue;
            }
            let full = if parent.is_empty() { name.to_string() } else { format!("{parent}::{name}") };
            // `famix::clip::download`, or `download` in a `use famix::clip::{...}` group.
            let named = outside.contains(&format!("famix::{full}"))
                || outside.match_indices(&format!("famix::{parent}::{{")).any(|(i, m)| {
                    let group = &outside[i + m.len()..];
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    group.split(',').any(|g| g == name || g.starts_with(&format!("{name}::")))
                });
            if !named {
                unused.push(full);
            }
        }
    }
    assert!(unused.is_empty(), "public library modules used nowhere outside the library (make them pub(crate)): {unused:#?}");
}

//! Source-level rules of the code base that a compiler does not check: the library
//! never reaches into the command line, never prints, and cites the design document
//! that is in the repository (docs/design.md), not one that is not.

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

fn library_sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter(|p| !p.starts_with(src.join("cli")) && p.file_name().is_some_and(|n| n != "main.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn the_library_does_not_depend_on_the_command_line() {
    let files = library_sources();
    assert!(files.len() > 20, "found only {} library files", files.len());
    for (p, text) in &files {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let bad =
                ["cli::", "indicatif", "anyhow", "println!", "eprintln!", "print!(", "process::exit"].iter().find(|b| code.contains(*b));
            // clap appears only behind the `cli` feature.
            let clap = code.contains("clap::") && !code.contains("cfg_attr(feature = \"cli\"");
            assert!(bad.is_none() && !clap, "{}:{}: library code uses {:?}: {line}", p.display(), i + 1, bad.unwrap_or(&"clap"));
        }
    }
}

#[test]
fn sources_cite_documents_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(root.join("docs/design.md").is_file());
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(concat!("SP", "EC")), "{} cites a document that is not in the repository", p.display());
    }
}

//! The documents: README stays short, README and the guide describe famix (not how it
//! was developed), every relative link and anchor in them resolves, every guide page
//! is in the book's table of contents, and the generated command reference and man
//! pages equal what the built binary writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::*;

fn guide() -> PathBuf {
    repo_root().join("docs/src")
}

/// README.md and every Markdown page of the guide, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let mut files = vec![repo_root().join("README.md")];
    files.extend(files_with_extension(&guide(), "md"));
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// The lines of `text` outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// mdBook's (and GitHub's) anchor of a heading: lower case, letters, digits, `-`
/// and `_` kept, white space to `-`, everything else dropped; repeats get `-1`, `-2`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#').trim()) else { continue };
        let plain = strip_links(title).replace(['`', '*'], "");
        let id: String = plain
            .chars()
            .filter_map(|c| match c {
                c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c.to_lowercase().next().unwrap_or(c)),
                c if c.is_whitespace() => Some('-'),
                _ => None,
            })
            .collect();
        let n = seen.entry(id.clone()).or_insert(0);
        out.insert(if *n == 0 { id.clone() } else { format!("{id}-{n}") });
        *n += 1;
    }
    out
}

/// `[text](target)` → `text`.
fn strip_links(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("](") {
        let (head, tail) = rest.split_at(i);
        out.push_str(&head.replacen('[', "", 1));
        rest = tail[2..].split_once(')').map(|(_, r)| r).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Every `](target)` link in the prose of `text`, with its line number.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    for (n, line) in prose(text) {
        for part in line.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                out.push((n, part[..end].trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn readme_is_at_most_250_lines() {
    let n = std::fs::read_to_string(repo_root().join("README.md")).unwrap().lines().count();
    assert!(n <= 250, "README.md has {n} lines; the guide (docs/src) is the place for the rest");
}

#[test]
fn documents_describe_famix_not_how_it_was_developed() {
    let banned =
        ["this session", "previous session", "earlier session", "the issue's", "issue's target", "not met", "targets met", "target met"];
    let mut found = vec![];
    for (p, text) in documents() {
        for (i, line) in text.lines().enumerate() {
            let l = line.to_lowercase();
            if let Some(b) = banned.iter().find(|b| l.contains(*b)) {
                found.push(format!("{}:{}: {b:?}: {line}", p.display(), i + 1));
            }
        }
    }
    assert!(found.is_empty(), "documents that speak of famix's development:\n{}", found.join("\n"));
}

#[test]
fn relative_links_and_anchors_resolve() {
    let docs = documents();
    let texts: BTreeMap<PathBuf, &String> = docs.iter().map(|(p, t)| (p.canonicalize().unwrap(), t)).collect();
    let mut broken = vec![];
    for (p, text) in &docs {
        for (line, target) in links(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').map(|(f, a)| (f, Some(a))).unwrap_or((target.as_str(), None));
            let dest = if file.is_empty() { p.clone() } else { p.parent().unwrap().join(file) };
            let Ok(dest) = dest.canonicalize() else {
                broken.push(format!("{}:{line}: {target}: no such file", p.display()));
                continue;
            };
            if let Some(a) = anchor {
                let Some(t) = texts.get(&dest) else {
                    broken.push(format!("{}:{line}: {target}: an anchor into a file that is not a document", p.display()));
                    continue;
                };
                if !anchors(t).contains(a) {
                    broken.push(format!("{}:{line}: {target}: no heading with anchor #{a}", p.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_guide_page_is_in_the_table_of_contents() {
    let summary = std::fs::read_to_string(guide().join("SUMMARY.md")).unwrap();
    let listed: BTreeSet<String> = links(&summary).into_iter().map(|(_, t)| t).collect();
    for (p, _) in documents() {
        let Ok(rel) = p.strip_prefix(guide()) else { continue };
        let rel = rel.display().to_string();
        if rel != "SUMMARY.md" {
            assert!(listed.contains(&rel), "docs/src/{rel} is not in docs/src/SUMMARY.md, so the book leaves it out");
        }
    }
    for t in &listed {
        assert!(guide().join(t).is_file(), "SUMMARY.md lists {t}, which does not exist");
    }
}

/// Files of a folder, name → bytes.
fn folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// The committed command reference and man pages are what the binary generates from
/// its clap definitions (`make reference` regenerates them).
#[test]
fn the_command_reference_and_man_pages_are_current() {
    let d = tmpdir();
    let (md, man) = (d.path().join("md"), d.path().join("man"));
    let (code, _, err) = run_famix(&["reference", "--markdown", md.to_str().unwrap(), "--man", man.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for (generated, committed) in [(md, guide().join("reference")), (man, repo_root().join("docs/man"))] {
        let (want, have) = (folder(&generated), folder(&committed));
        assert_eq!(want.keys().collect::<Vec<_>>(), have.keys().collect::<Vec<_>>(), "{}: run `make reference`", committed.display());
        for (name, bytes) in &want {
            assert!(
                &have[name] == bytes,
                "{}/{name} differs from what `famix reference` writes: run `make reference`",
                committed.display()
            );
        }
    }
}

#[test]
fn anchors_follow_mdbook() {
    let a =
        anchors("# §3. Style mining (patch-wise PIN)\n## int8 (`--int8 CALIBRATION`)\n## Install\n## Install\n```\n# not a heading\n```\n");
    let want: BTreeSet<String> =
        ["3-style-mining-patch-wise-pin", "int8---int8-calibration", "install", "install-1"].iter().map(|s| s.to_string()).collect();
    assert_eq!(a, want);
    assert_eq!(links("see [a](x.md#y) and [b](../z.md)\n```\n[c](no.md)\n```"), vec![(1, "x.md#y".into()), (1, "../z.md".into())]);
}

/// `famix train`'s flags are the library's declared training settings
/// (`famix::train::SETTINGS`): each setting has the flag of its name (underscores as
/// hyphens), its help paragraph starts with the declared documentation, and the default
/// it prints is the declared one, which for settings of the configuration is the
/// reference configuration's value (numbers compared as numbers, relative tolerance
/// 1e-12). A flag without its declaration, or a default printed from anywhere else,
/// fails here.
#[test]
fn train_flags_and_printed_defaults_follow_the_config() {
    use famix::train::settings::DefaultValue;
    use famix::train::{TrainConfig, SETTINGS};
    let r = TrainConfig::reference("c.pt".into(), String::new(), famix::data::DatasetKind::Gta5, "d".into(), None);
    let fields = serde_json::to_value(&r).unwrap();
    let paragraphs = help_paragraphs("train");
    let mut compared = 0;
    for s in SETTINGS {
        let flag = s.name.replace('_', "-");
        let Some((_, text)) = paragraphs.iter().find(|(f, _)| *f == flag) else { panic!("setting {} has no --{flag} flag", s.name) };
        let first_words: String = s.doc.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        assert!(text.starts_with(&first_words), "--{flag}: help '{text}' is not the declared '{}'", s.doc);
        let printed = text.split("[default: ").nth(1).and_then(|t| t.split(']').next());
        assert_eq!(printed.map(str::to_string), s.default_text(), "--{flag}");
        if s.default != DefaultValue::Reference {
            continue;
        }
        let Some(printed) = printed else { continue };
        compared += 1;
        match &fields[s.name] {
            serde_json::Value::Number(n) => {
                let (want, got) = (n.as_f64().unwrap(), printed.parse::<f64>().unwrap_or(f64::NAN));
                assert!((want - got).abs() <= 1e-12 * want.abs().max(1.0), "--{flag}: help says {printed}, the reference is {want}");
            }
            serde_json::Value::String(v) => assert_eq!(printed, v, "--{flag}"),
            other => panic!("--{flag}: unexpected {other}"),
        }
    }
    // Those whose default is the reference's and printed (not: paths, condition, styles, monitor).
    assert_eq!(compared, 17, "settings with a reference default printed");
}

/// `famix CMD --help` as (flag, the text of its help paragraph, lines joined by spaces).
fn help_paragraphs(cmd: &str) -> Vec<(String, String)> {
    let (code, help, err) = run_famix(&[cmd, "--help"]);
    assert_eq!(code, 0, "{err}");
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(flag) = t.strip_prefix("--").filter(|_| line.starts_with("      --")) {
            let name = flag.split([' ', '[']).next().unwrap().to_string();
            // A short help shares the flag's line: keep what follows the value name.
            let rest = flag.split_once("> ").map(|(_, r)| r.trim_start()).unwrap_or("");
            paragraphs.push((name, if rest.is_empty() { String::new() } else { format!("{rest} ") }));
        } else if let Some((_, text)) = paragraphs.last_mut() {
            text.push_str(t);
            text.push(' ');
        }
    }
    paragraphs
}

/// The default `famix CMD --help` prints for `--flag`, as a number.
fn printed_default(paragraphs: &[(String, String)], flag: &str) -> f64 {
    let text = &paragraphs.iter().find(|(f, _)| f == flag).unwrap_or_else(|| panic!("no --{flag}")).1;
    let printed = text.split("[default: ").nth(1).and_then(|t| t.split(']').next()).unwrap_or_else(|| panic!("--{flag}: {text}"));
    printed.trim().parse().unwrap_or_else(|_| panic!("--{flag}: default {printed:?} is not a number"))
}

/// The defaults `famix mine-styles --help` and `famix clip-pretrain --help` print are
/// the library's (`MineSettings::reference`, `PinConfig::default`,
/// `PretrainConfig::new`), compared numerically (relative 1e-12): the help restates
/// them, and this fails when either side changes alone.
#[test]
fn mining_and_pretraining_printed_defaults_are_the_library_defaults() {
    use famix::clip::pretrain::PretrainConfig;
    use famix::clip::{ResNetConfig, TextConfig};
    let close = |flag: &str, printed: f64, want: f64| {
        assert!((printed - want).abs() <= 1e-12 * want.abs().max(1.0), "--{flag}: help says {printed}, the library {want}");
    };
    let mine = help_paragraphs("mine-styles");
    let (m, pin) = (famix::style::mining::MineSettings::reference(1), famix::style::PinConfig::default());
    for (flag, want) in [
        ("batch", m.batch as f64),
        ("crop", m.crop as f64),
        ("seed", m.seed as f64),
        ("passes", m.passes as f64),
        ("group", m.group as f64),
        ("save-every", m.save_every as f64),
        ("iters", pin.iters as f64),
        ("lr", pin.lr),
        ("grid", pin.grid as f64),
    ] {
        close(flag, printed_default(&mine, flag), want);
    }
    let lr_help = &mine.iter().find(|(f, _)| f == "lr").unwrap().1;
    assert!(lr_help.contains(&format!("momentum {}, weight decay {:e}", pin.momentum, pin.weight_decay)), "{lr_help}");
    let pre = help_paragraphs("clip-pretrain");
    let p = PretrainConfig::new("c".into(), ResNetConfig::tiny(), TextConfig::tiny(), 100);
    for (flag, want) in [
        ("batch", p.batch as f64),
        ("lr", p.lr),
        ("weight-decay", p.weight_decay),
        ("beta1", p.betas.0),
        ("beta2", p.betas.1),
        ("eps", p.eps),
        ("seed", p.seed as f64),
        ("log-interval", p.log_interval as f64),
        ("save-interval", p.save_interval as f64),
    ] {
        close(flag, printed_default(&pre, flag), want);
    }
    let warmup = &pre.iter().find(|(f, _)| f == "warmup").unwrap().1;
    assert_eq!(p.warmup * 10, p.iters, "the library's warm-up is 10 % of the steps");
    assert!(warmup.contains("[default: 10 % of --iters]"), "{warmup}");
}

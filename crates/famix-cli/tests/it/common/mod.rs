//! Shared helpers for famix's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

#[path = "../../../../famix/tests/lib/common.rs"]
mod base;
pub use base::*;

pub fn famix_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_famix"))
}

/// A command running the famix binary with one intra-op thread. The tests run in
/// parallel (one per core) and most start famix processes: with libtorch's default of
/// one OpenMP thread per core each, the processes' spinning threads outnumber the cores
/// and the suite ran about three times slower (measured on 2 cores: two crash tests side
/// by side took 160 s, 50 s with one thread each). Nothing a test checks depends on the
/// thread count (results are compared within one configuration).
pub fn famix_command() -> std::process::Command {
    let mut c = std::process::Command::new(famix_bin());
    c.env("OMP_NUM_THREADS", "1").env("MKL_NUM_THREADS", "1");
    c
}

/// Runs the famix binary; returns (exit code, stdout, stderr).
pub fn run_famix(args: &[&str]) -> (i32, String, String) {
    let out = famix_command().args(args).output().expect("famix runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `famix COMMAND` on the mini GTA5 fixture with the tiny CLIP `clip` on the CPU:
/// `fixed` flags, then `extra` (a flag given twice takes its last value, so extras
/// override).
fn fixture_job(command: &str, clip: &str, fixed: &[String], extra: &[&str]) -> Vec<String> {
    let (clip, data) = (fixture(clip).display().to_string(), fixture("gta5_mini").display().to_string());
    let base =
        [command, "--clip", &clip, "--dataset", "gta5", "--data-root", &data, "--split", "all", "--device", "cpu"].map(str::to_string);
    base.into_iter().chain(fixed.iter().cloned()).chain(extra.iter().map(|s| s.to_string())).collect()
}

/// `famix train` on the mini GTA5 fixture (batch 2, crop 48) into `run` with `bank`.
pub fn train_args(run: &std::path::Path, bank: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let fixed = ["--styles".into(), bank.display().to_string(), "--out".into(), run.display().to_string()];
    let fixed: Vec<String> = fixed.into_iter().chain(["--batch", "2", "--crop", "48"].map(str::to_string)).collect();
    fixture_job("train", "clip_a_state.pt.gz", &fixed, extra)
}

/// `famix mine-styles` on the mini GTA5 fixture (crop 72) into `out`.
pub fn mine_args(out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    fixture_job("mine-styles", "clip_a.safetensors.gz", &["--crop".into(), "72".into(), "--out".into(), out.display().to_string()], extra)
}

/// Runs famix with owned arguments.
pub fn run_args(args: &[String]) -> (i32, String, String) {
    run_famix(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The reference's `saved_params.pkl` imported as a bank in `dir`.
pub fn reference_bank(dir: &std::path::Path) -> std::path::PathBuf {
    let bank = dir.join("bank.safetensors");
    let (code, _, err) = run_famix(&["styles", "import", fixture("saved_params.pkl").to_str().unwrap(), "--out", bank.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    bank
}

/// The first Chromium found (Debian's `chromium`, installed by `make test`).
pub fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.to_string();
        }
    }
    panic!("headless Chromium is needed for this test: `make test` installs Debian's chromium package (see README)");
}

/// Headless Chromium's flags for a quiet, offline, throw-away profile.
fn chromium_base(profile: &std::path::Path) -> Vec<String> {
    let fixed = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"];
    let fixed = fixed.into_iter().chain(["--disable-component-update", "--disable-sync", "--virtual-time-budget=30000"]);
    fixed.map(str::to_string).chain([format!("--user-data-dir={}", profile.display())]).collect()
}

/// The DOM of `url` after the page ran its scripts, as headless Chromium dumps it.
pub fn chromium_dump_dom(url: &str, profile: &std::path::Path) -> String {
    let out = std::process::Command::new(chromium()).args(chromium_base(profile)).args(["--dump-dom", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `width`×`height` screenshot of `url` by headless Chromium, written to `png`.
pub fn chromium_screenshot(url: &str, profile: &std::path::Path, png: &std::path::Path, width: u32, height: u32) {
    let st = std::process::Command::new(chromium())
        .args(chromium_base(profile))
        .args([
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".into(),
            url.into(),
        ])
        .output()
        .unwrap();
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&st.stderr));
}

/// The project venv's Python (the tests' real clients: TensorBoard's reader, ONNX Runtime).
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run `make test` (it installs the venv and tools/requirements-test.txt)", p.display());
    p
}

/// Every file under `dir`, recursively (unsorted).
pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A protocol-2 pickle whose persistent id is a list that contains itself (a crafted
/// file that once overflowed famix's stack).
pub fn cyclic_persistent_id_pickle() -> Vec<u8> {
    // PROTO 2, EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, BINPERSID, STOP
    b"\x80\x02]q\x00h\x00aQ.".to_vec()
}

/// The same pickle as `archive/data.pkl` of a PyTorch zip checkpoint.
pub fn cyclic_persistent_id_zip() -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&cyclic_persistent_id_pickle()).unwrap();
        z.start_file("archive/version", opts).unwrap();
        z.write_all(b"3\n").unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// Runs famix with `FAMIX_CRASH_AT=at` (None: no crash), output discarded; whether it
/// exited 0. The hook aborts the process at the N-th durable step, as `kill -9` would.
pub fn famix_crashing(args: &[String], at: Option<u32>) -> bool {
    let mut c = famix_command();
    c.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    if let Some(n) = at {
        c.env("FAMIX_CRASH_AT", n.to_string());
    }
    c.status().unwrap().success()
}

/// `famix eval` of `checkpoint` on `dataset` at `root` (CPU), then `extra` flags.
pub fn eval_cpu(checkpoint: &std::path::Path, dataset: &str, root: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let base = ["eval", "--checkpoint", checkpoint.to_str().unwrap(), "--dataset", dataset, "--data-root", root.to_str().unwrap()];
    run_famix(&base.iter().chain(&["--device", "cpu"]).chain(extra).copied().collect::<Vec<_>>())
}

/// `famix eval` of `checkpoint` on the mini Cityscapes fixture (CPU), then `extra` flags.
pub fn eval_cityscapes_mini(checkpoint: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    eval_cpu(checkpoint, "cityscapes", &fixture("cityscapes_mini"), extra)
}

/// `famix predict --checkpoint CKPT --out OUT --device cpu EXTRA... INPUT`.
pub fn predict_cpu(checkpoint: &std::path::Path, out: &std::path::Path, input: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let base = ["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"];
    run_famix(&base.iter().chain(extra).chain([&input.to_str().unwrap()]).copied().collect::<Vec<_>>())
}

/// Every file under `dir` (recursively) whose name ends in `.ext`, sorted.
pub fn files_with_extension(dir: &std::path::Path, ext: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

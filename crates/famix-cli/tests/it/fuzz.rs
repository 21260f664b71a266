//! Bounded fuzzing of every parser of untrusted input, on stable Rust: seeded
//! mutations (bit flips, boundary values in 1/2/4/8-byte fields, truncations, chunk
//! deletions and duplications) of valid files — PyTorch zip and legacy checkpoints,
//! TorchScript archives, safetensors, famix checkpoints, pickles, PNG and JPEG images,
//! label PNGs — plus random text for the tokenizer. Each case must return `Ok` or a
//! clean error: a panic fails the test with the input and seed that caused it, an
//! abort (stack overflow, failed allocation) fails the whole test binary, and the
//! process's peak memory must stay under 4 GiB (checked at the end).
//!
//! `FAMIX_FUZZ_CASES` (default 400) sets the cases per input; `.ci/run` uses the
//! default (about a minute on 2 cores). `fuzz/` has a cargo-fuzz target for long runs.
use crate::common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use famix::rng::Rng;

const LABEL: &str = "cityscapes_mini/gtFine/val/bonn/bonn_000002_000019_gtFine_labelIds.png";

fn cases() -> u64 {
    std::env::var("FAMIX_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
}

/// One seeded mutation of `input`.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if v.is_empty() {
            v.push(rng.below(256) as u8);
        }
        let at = rng.below(v.len() as u64) as usize;
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = [0u8, 0xff, 0x7f, 0x80, 0x01][rng.below(5) as usize],
            2 => {
                let width = [2usize, 4, 8][rng.below(3) as usize];
                let value: u64 = [u64::MAX, 0, i64::MAX as u64, 1 << 31, 1 << 40, 0x8000_0000_0000_0000][rng.below(6) as usize];
                for (i, b) in value.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(slot) = v.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => v.truncate(at),
            4 => {
                let len = (rng.below(64) as usize).min(v.len() - at);
                v.drain(at..at + len);
            }
            5 => {
                let len = (rng.below(64) as usize).min(v.len() - at);
                let chunk = v[at..at + len].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {
                // Mutations near the start hit headers and pickles, not tensor data.
                let at = rng.below(v.len().min(512) as u64) as usize;
                v[at] = rng.below(256) as u8;
            }
        }
    }
    v
}

/// Runs `check` on `cases()` mutations of `input`; returns the failures.
fn fuzz(name: &str, input: &[u8], salt: u64, check: &dyn Fn(&[u8])) -> Vec<String> {
    let mut failures = Vec::new();
    for case in 0..cases() {
        let mut rng = Rng::derive(salt, &[case]);
        let m = mutate(input, &mut rng);
        if catch_unwind(AssertUnwindSafe(|| check(&m))).is_err() {
            failures.push(format!("{name}: case {case} (salt {salt}) panicked"));
        }
    }
    failures
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb / 1024.0)
}

fn gunzip(name: &str) -> Vec<u8> {
    famix::io::archive::read_bytes(&fixture(name)).unwrap()
}

#[test]
fn checkpoint_readers_never_panic() {
    std::panic::set_hook(Box::new(|_| {})); // failures are collected and reported below
    let load = |b: &[u8]| {
        let _ = famix::io::archive::load_bytes(b);
    };
    // The mutations must reach both outcomes, or the harness tests nothing.
    let (ok, err) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let mut failures =
        fuzz(
            "zip_state.pth (outcomes)",
            &std::fs::read(fixture("zip_state.pth")).unwrap(),
            99,
            &|b| match famix::io::archive::load_bytes(b) {
                Ok(_) => ok.set(ok.get() + 1),
                Err(_) => err.set(err.get() + 1),
            },
        );
    assert!(ok.get() > 0 && err.get() > 0, "mutations gave {} loads and {} errors", ok.get(), err.get());
    for (i, name) in ["zip_state.pth", "legacy_state.pth", "seg_a_ref.pth", "clip_b_script.pt", "clip_b_state.pt"].iter().enumerate() {
        failures.extend(fuzz(name, &std::fs::read(fixture(name)).unwrap(), 100 + i as u64, &load));
    }
    failures.extend(fuzz("clip_a.safetensors", &gunzip("clip_a.safetensors.gz"), 200, &load));
    failures.extend(fuzz("saved_params.pkl", &std::fs::read(fixture("saved_params.pkl")).unwrap(), 300, &|b| {
        let _ = famix::io::pickle::load_plain(b);
    }));
    // Seeds that once crashed famix: a self-referencing persistent id, plain and zipped.
    failures.extend(fuzz("cyclic persistent id", &cyclic_persistent_id_pickle(), 310, &|b| {
        let _ = famix::io::pickle::load_plain(b);
    }));
    failures.extend(fuzz("cyclic persistent id (zip)", &cyclic_persistent_id_zip(), 320, &load));
    // famix's own checkpoints go through the header checks before any allocation.
    let d = tmpdir();
    let ckpt = famix::model::checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    let target = d.path().join("mutated.safetensors");
    failures.extend(fuzz("famix checkpoint", &bytes, 400, &|b| {
        std::fs::write(&target, b).unwrap();
        let _ = famix::Segmenter::load(&target, tch::Device::Cpu);
    }));
    // gzip wrapping (decompression limits).
    let gz = std::fs::read(fixture("clip_a_state.pt.gz")).unwrap();
    let gz_target = d.path().join("mutated.pt.gz");
    failures.extend(fuzz("gzip checkpoint", &gz, 500, &|b| {
        std::fs::write(&gz_target, b).unwrap();
        let _ = famix::io::archive::load_file(&gz_target);
    }));
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{} panics:\n{}", failures.len(), failures.join("\n"));
    let peak = peak_rss_mb().unwrap_or(0.0);
    assert!(peak < 4096.0, "peak memory {peak:.0} MiB");
}

#[test]
fn image_and_label_decoders_never_panic() {
    let d = tmpdir();
    let mut failures = Vec::new();
    let png = std::fs::read(fixture("img_a.png")).unwrap();
    let label = std::fs::read(fixture(LABEL)).unwrap();
    let jpeg = {
        let img = famix::Image8::open_rgb(&fixture("img_a.png")).unwrap();
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut buf)
            .encode(&img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
            .unwrap();
        buf
    };
    for (i, (name, bytes)) in [("png", png), ("jpeg", jpeg)].into_iter().enumerate() {
        let p = d.path().join(format!("x.{name}"));
        failures.extend(fuzz(name, &bytes, 600 + i as u64, &|b| {
            std::fs::write(&p, b).unwrap();
            if let Ok(img) = famix::Image8::open_rgb(&p) {
                assert_eq!(img.data.len(), img.width * img.height * 3);
            }
        }));
    }
    let p = d.path().join("label.png");
    failures.extend(fuzz("label png", &label, 700, &|b| {
        std::fs::write(&p, b).unwrap();
        let _ = famix::data::datasets::read_label_ids(&p, false);
        let _ = famix::data::datasets::read_label_ids(&p, true);
    }));
    assert!(failures.is_empty(), "{} panics:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_tokenizer_takes_any_text() {
    let tok = famix::clip::tokenizer::Tokenizer::global();
    let mut rng = Rng::new(9);
    for _ in 0..cases() * 4 {
        let len = rng.below(200) as usize;
        let text: String = (0..len)
            .map(|_| match rng.below(4) {
                0 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'),
                1 => ['<', '|', '>', '\'', ' ', '\n', '&'][rng.below(7) as usize],
                _ => (b'a' + rng.below(26) as u8) as char,
            })
            .collect();
        let _ = tok.tokenize(&text, 77, rng.below(2) == 0);
    }
    for bad in [0usize, 1] {
        assert!(tok.tokenize("a photo", bad, true).is_err());
    }
    // The padded table is allocated from the context length: bounded.
    for bad in [0usize, 1, 100_000_000_000] {
        assert!(tok.batch(&["a".into()], bad, true).is_err());
    }
}

/// Cases that crashed famix before (kept as fixed regressions, not random).
#[test]
fn known_hostile_inputs_are_clean_errors() {
    let garbage: [&[u8]; 4] = [b"", b"\x80\x02", b"PK\x03\x04garbage", b"\x1f\x8b\x08\x00broken"];
    for g in garbage {
        assert!(famix::io::archive::load_bytes(g).is_err());
    }
    for cyclic in [cyclic_persistent_id_pickle(), cyclic_persistent_id_zip()] {
        let e = format!("{:#}", famix::io::archive::load_bytes(&cyclic).err().expect("a cyclic pickle must be refused"));
        assert!(e.contains("cycle"), "{e}");
    }
}

//! A bounded load test of a running `famix serve`: C clients each send R requests
//! (`?output=trainid`) with one image, then the latency percentiles and the
//! throughput are printed. It stops by itself.
//!
//! ```sh
//! famix serve --checkpoint CKPT --port 8080 &
//! cargo run --release --example serve_load -- http://127.0.0.1:8080 IMAGE.png [CLIENTS=8] [REQUESTS=50]
//! ```
//!
//! `cargo run --release --example serve_load -- --write-rn50 rn50.safetensors` writes a
//! random-weight RN50 segmenter to serve (real model size, no trained weights needed).

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--write-rn50") {
        let out = args.get(1).ok_or("--write-rn50 PATH")?;
        let p = famix::model::checkpoint::save_random(
            std::path::Path::new(out),
            famix::clip::ResNetConfig::rn50(),
            famix::model::HeadConfig::reference(19),
        )?;
        println!("{}", p.display());
        return Ok(());
    }
    let url = args.first().ok_or("usage: serve_load URL IMAGE [CLIENTS] [REQUESTS]")?.clone();
    let image = std::fs::read(args.get(1).ok_or("usage: serve_load URL IMAGE [CLIENTS] [REQUESTS]")?)?;
    let clients: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let requests: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, image) = (url.clone(), image.clone());
            std::thread::spawn(move || {
                (0..requests)
                    .map(|_| {
                        let t = Instant::now();
                        let ok = ureq::post(&format!("{url}/v1/segment?output=trainid"))
                            .timeout(Duration::from_secs(600))
                            .send_bytes(&image)
                            .is_ok();
                        (ok, t.elapsed().as_secs_f64() * 1e3)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(bool, f64)> = threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
    let secs = t0.elapsed().as_secs_f64();
    let errors = all.iter().filter(|(ok, _)| !ok).count();
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].1;
    println!(
        "{clients} clients x {requests} requests: {errors} errors, p50 {:.1} ms, p99 {:.1} ms, {:.2} images/s",
        pct(0.5),
        pct(0.99),
        all.len() as f64 / secs
    );
    Ok(())
}

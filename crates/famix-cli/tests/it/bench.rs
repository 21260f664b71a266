//! `famix bench` runs every workload at CI size and prints the documented JSON keys
//! (inference once per engine).
use crate::common;

#[test]
fn bench_prints_one_json_line_per_workload() {
    let (code, out, err) = common::run_famix(&[
        "bench",
        "--device",
        "cpu",
        "--arch",
        "tiny",
        "--what",
        "infer,train,mine,loader",
        "--batch",
        "2",
        "--crop",
        "64",
        "--infer-size",
        "64x96",
        "--mine-batch",
        "2",
        "--mine-crop",
        "48",
        "--mine-iters",
        "2",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let whats: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap()).collect();
    // infer: one line per engine that runs fp32 on the CPU (libtorch, ONNX Runtime).
    assert_eq!(whats, ["infer", "infer", "train", "mine", "loader"]);
    assert_eq!((lines[0]["engine"].as_str(), lines[1]["engine"].as_str()), (Some("torch"), Some("onnxruntime")));
    for l in &lines {
        for k in ["device", "batch", "height", "width", "median_ms", "min_ms", "max_ms", "peak_mem_mb", "peak_rss_mb", "images_per_s"] {
            assert!(l.get(k).is_some(), "{k} missing in {l}");
        }
        let (min, med, max) = (l["min_ms"].as_f64().unwrap(), l["median_ms"].as_f64().unwrap(), l["max_ms"].as_f64().unwrap());
        assert!(min > 0.0 && min <= med && med <= max, "{l}");
        assert!(l["images_per_s"].as_f64().unwrap() > 0.0);
        let rss = l["peak_rss_mb"].as_f64().expect("peak_rss_mb on Linux");
        assert!(rss > 10.0 && rss < 64_000.0, "implausible peak RSS {rss} MiB");
    }
    assert_eq!((lines[0]["height"].as_u64(), lines[0]["width"].as_u64()), (Some(64), Some(96)));
    assert_eq!(lines[2]["batch"], 2);
    let (code, _, err) = common::run_famix(&["bench", "--device", "cpu", "--what", "fly"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown workload"), "{err}");
}

//! Video prediction through ffmpeg pipes: frame count, frame rate and size are kept,
//! and frame k's prediction is exactly the prediction of the decoded frame k as an
//! image (the comparison is with ffmpeg's decoding of the input, so the codec's loss
//! on the input does not matter; tolerance: none, ids must be equal).
use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

fn ffmpeg(args: &[&str]) {
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg is needed: `make test` installs Debian's ffmpeg");
    assert!(st.success(), "ffmpeg {args:?}");
}

/// (frames, frame rate, width, height) by ffprobe, counting decoded frames.
fn probe(p: &Path) -> (u64, String, u64, u64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,r_frame_rate,width,height",
            "-of",
            "json",
        ])
        .arg(p)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        s["nb_read_frames"].as_str().unwrap().parse().unwrap(),
        s["r_frame_rate"].as_str().unwrap().into(),
        s["width"].as_u64().unwrap(),
        s["height"].as_u64().unwrap(),
    )
}

/// `famix predict` on the CPU with `ckpt` into `out`, then `extra`; must succeed.
/// Returns its stderr.
fn predict(ckpt: &Path, out: &Path, extra: &[&str]) -> String {
    let args: Vec<&str> = ["predict", "--checkpoint", ckpt.to_str().unwrap(), "--device", "cpu", "--out", out.to_str().unwrap()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let (code, _, err) = run_famix(&args);
    assert_eq!(code, 0, "{err}");
    err
}

#[test]
fn video_in_video_out_with_per_frame_predictions() {
    let d = tmpdir();
    let clip = d.path().join("street.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=96x64:rate=10",
        "-frames:v",
        "12",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        clip.to_str().unwrap(),
    ]);
    let ckpt = fixture("seg_a_ref.pth");
    let out = d.path().join("out");
    predict(&ckpt, &out, &["--frames", "--color-video", "--batch", "5", clip.to_str().unwrap()]);
    for v in ["street_overlay.mp4", "street_color.mp4"] {
        assert_eq!(probe(&out.join(v)), (12, "10/1".to_string(), 96, 64), "{v}");
    }
    // Frame k of the video run = the image run on ffmpeg's decoding of frame k.
    let frames = d.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    ffmpeg(&["-i", clip.to_str().unwrap(), "-fps_mode", "passthrough", frames.join("%06d.png").to_str().unwrap()]);
    let img_out = d.path().join("img_out");
    predict(&ckpt, &img_out, &[frames.to_str().unwrap()]);
    for k in 0..12 {
        let video = famix::Image8::open_rgb(&out.join(format!("street/{k:06}_color.png"))).unwrap();
        let image = famix::Image8::open_rgb(&img_out.join(format!("{:06}_color.png", k + 1))).unwrap();
        assert!(video.data == image.data, "frame {k}: the video's prediction differs from the image's");
        assert!(out.join(format!("street/{k:06}_trainid.png")).exists());
    }
}

/// Without ffmpeg on PATH, a video input is an error that says what to install; the
/// images in the same call are still predicted.
#[test]
fn missing_ffmpeg_is_a_clear_error() {
    let d = tmpdir();
    let clip = d.path().join("x.mp4");
    std::fs::write(&clip, b"not really a video").unwrap();
    let out = famix_command()
        .args(["predict", "--checkpoint", fixture("seg_a_ref.pth").to_str().unwrap(), "--device", "cpu", "--out"])
        .arg(d.path().join("o"))
        .arg(&clip)
        .arg(fixture("img_a.png"))
        .env("PATH", d.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs `ffprobe`") && err.contains("apt install ffmpeg"), "{err}");
    assert!(d.path().join("o/img_a_trainid.png").exists());
}

/// Two videos with the same name from different folders get distinct outputs, named
/// as colliding images are (`<stem>_<ext>`, then a counter), with a note.
#[test]
fn same_named_videos_do_not_overwrite_each_other() {
    let d = tmpdir();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        let clip = d.path().join(sub).join("cam.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=5",
            "-frames:v",
            "3",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            clip.to_str().unwrap(),
        ]);
    }
    let out = d.path().join("out");
    let (a, b) = (d.path().join("a/cam.mp4"), d.path().join("b/cam.mp4"));
    let err = predict(&fixture("seg_a_ref.pth"), &out, &[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(err.contains("would share its output name"), "{err}");
    for v in ["cam_mp4_overlay.mp4", "cam_mp4_2_overlay.mp4"] {
        assert_eq!(probe(&out.join(v)).0, 3, "{v}");
    }
}

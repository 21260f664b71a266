//! Video prediction for `famix predict`: frames stream from the system `ffmpeg` through
//! a pipe (rawvideo RGB24, no temporary frame folders), are segmented in batches, and
//! stream into encoder `ffmpeg` processes: `<stem>_overlay.mp4` (and `<stem>_color.mp4`)
//! with the input's frame count and frame rate (frames are passed through as decoded,
//! `-fps_mode passthrough`), optionally per-frame PNGs. Decoding, the model and
//! encoding run on separate threads with bounded queues, so memory does not grow with
//! the video's length. famix links no video library: ffmpeg's codecs are the user's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
use tch::{Device, Kind};

use famix::data::staging::{same_size_batches, staged};
use famix::imageops::Image8;
use famix::render::{colorize, overlay, write_outputs_as, IdFormat};
use famix::{PredictOptions, Segmenter};

/// The largest frame accepted (8192 × 8192): ffprobe's answer is untrusted input.
const MAX_VIDEO_PIXELS: usize = 1 << 26;

/// File extensions `predict` treats as videos.
pub const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "mkv", "avi", "mov", "webm"];

/// Whether `p` names a video file (by extension).
pub fn is_video(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What ffprobe says about a video's first video stream.
#[derive(Debug, Clone)]
pub struct Probe {
    pub width: usize,
    pub height: usize,
    /// The frame rate as ffprobe gives it (a rational such as `30000/1001`).
    pub fps: String,
}

/// The error of starting `name`: what to install when it is not on PATH.
fn start_error(name: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("video input needs `{name}` (FFmpeg) on PATH; install it (Debian/Ubuntu: apt install ffmpeg) or predict extracted frames")
    } else {
        anyhow!("cannot start {name}: {e}")
    }
}

/// ffprobe's width, height and frame rate of the first video stream of `path`.
pub fn probe(path: &Path) -> Result<Probe> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height,r_frame_rate", "-of", "json"])
        .arg(path)
        .output()
        .map_err(|e| start_error("ffprobe", e))?;
    if !out.status.success() {
        bail!("{}: ffprobe cannot read it: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("{}: unreadable ffprobe output", path.display()))?;
    let s = v["streams"].get(0).ok_or_else(|| anyhow!("{}: no video stream", path.display()))?;
    let (w, h) = (s["width"].as_u64().unwrap_or(0) as usize, s["height"].as_u64().unwrap_or(0) as usize);
    let fps = s["r_frame_rate"].as_str().unwrap_or("").to_string();
    if w == 0 || h == 0 || w * h > MAX_VIDEO_PIXELS || fps.is_empty() || fps.starts_with('0') {
        bail!("{}: unusable video stream ({w}×{h}, frame rate {fps:?})", path.display());
    }
    Ok(Probe { width: w, height: h, fps })
}

/// A child process whose stderr is collected on a thread (so it can never block it).
fn spawn(mut cmd: Command, stdin: Stdio, stdout: Stdio) -> Result<(Child, JoinHandle<String>)> {
    let mut child = cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped()).spawn().map_err(|e| start_error("ffmpeg", e))?;
    let mut err = child.stderr.take().expect("stderr is piped");
    let h = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Ok((child, h))
}

/// An ffmpeg process encoding RGB24 frames from its stdin into an H.264 MP4.
struct Encoder {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: JoinHandle<String>,
    path: PathBuf,
}

impl Encoder {
    fn new(path: &Path, p: &Probe) -> Result<Self> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args([
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            &format!("{}x{}", p.width, p.height),
            "-r",
            &p.fps,
            "-i",
            "-",
        ]);
        // yuv420p (what players expect) needs even sizes: odd ones get one padded pixel.
        cmd.args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]);
        cmd.args(["-fps_mode", "passthrough"]).arg(path);
        let (mut child, stderr) = spawn(cmd, Stdio::piped(), Stdio::null())?;
        let stdin = child.stdin.take();
        Ok(Encoder { child, stdin, stderr, path: path.into() })
    }

    fn write(&mut self, frame: &Image8) -> Result<()> {
        let w = self.stdin.as_mut().expect("open until finish");
        w.write_all(&frame.data).with_context(|| format!("encoding {} (ffmpeg stopped)", self.path.display()))
    }

    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        let err = self.stderr.join().unwrap_or_default();
        if !status.success() {
            bail!("ffmpeg could not write {}: {}", self.path.display(), err.trim());
        }
        Ok(())
    }
}

/// How to predict a video.
pub struct VideoJob<'a> {
    pub model: &'a Segmenter,
    pub opts: PredictOptions,
    pub batch: usize,
    pub color_video: bool,
    pub frames: bool,
    pub format: IdFormat,
}

/// Decoded frames of `path`, on a thread, through a bounded queue.
fn frames(path: &Path, p: &Probe, queue: usize) -> Result<(crossbeam_channel::Receiver<Image8>, Child, JoinHandle<String>)> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-i"]).arg(path).args([
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]);
    let (mut child, stderr) = spawn(cmd, Stdio::null(), Stdio::piped())?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = bounded(queue);
    let (w, h) = (p.width, p.height);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; w * h * 3];
        if out.read_exact(&mut buf).is_err() {
            return;
        }
        if tx.send(Image8 { width: w, height: h, channels: 3, data: buf }).is_err() {
            return;
        }
    });
    Ok((rx, child, stderr))
}

/// Segments every frame of `path`; writes `<out>/<stem>_overlay.mp4` (and the colour
/// video and frame PNGs when asked). Returns the number of frames.
pub fn predict_video(job: &VideoJob, path: &Path, out: &Path, stem: &Path) -> Result<u64> {
    let p = probe(path)?;
    job.model.check_size(p.width as i64, p.height as i64, job.opts.scale).with_context(|| path.display().to_string())?;
    let named = |suffix: &str| {
        let mut n = stem.as_os_str().to_os_string();
        n.push(suffix);
        out.join(n)
    };
    if let Some(dir) = named("").parent() {
        std::fs::create_dir_all(dir)?;
    }
    let queue = 2 * job.batch.max(1) + 2;
    let (rx, mut decoder, dec_err) = frames(path, &p, queue)?;
    let (tx_out, rx_out) = bounded::<(u64, Image8, Image8)>(queue);
    let ov = Encoder::new(&named("_overlay.mp4"), &p)?;
    let co = job.color_video.then(|| Encoder::new(&named("_color.mp4"), &p)).transpose()?;
    let (frame_dir, palette, format) = (job.frames.then(|| named("")), job.model.config().palette(), job.format);
    let writer = std::thread::spawn(move || write_frames(rx_out, ov, co, frame_dir, palette, format));
    let result = segment_frames(job, rx, tx_out);
    let written = writer.join().map_err(|_| anyhow!("the video writer panicked"))?;
    let _ = decoder.kill();
    let status = decoder.wait()?;
    let derr = dec_err.join().unwrap_or_default();
    let n = result?;
    written?;
    if n == 0 || (!status.success() && !derr.trim().is_empty()) {
        let why = if derr.trim().is_empty() { String::new() } else { format!(": {}", derr.trim()) };
        bail!("{}: ffmpeg decoded {n} frames{why}", path.display());
    }
    Ok(n)
}

/// Segments decoded frames in batches of `job.batch` and sends (index, frame, ids) to
/// the writer, in order; returns the number of frames. Closing `tx` (on return) ends
/// the writer.
fn segment_frames(
    job: &VideoJob,
    rx: crossbeam_channel::Receiver<Image8>,
    tx: crossbeam_channel::Sender<(u64, Image8, Image8)>,
) -> Result<u64> {
    let mut n = 0u64;
    // Frames are staged on the device by a producer thread while the model runs.
    let batches = same_size_batches(rx.into_iter().map(|f| ((), f)), job.batch.max(1));
    staged(batches, job.model.device(), 2, |_, frames, x| {
        let ids = job.model.predict_ids(&x, &job.opts)?.0.to_kind(Kind::Uint8).to_device(Device::Cpu);
        for (k, img) in frames.into_iter().enumerate() {
            let labels = Image8::from_tensor_u8(&ids.get(k as i64))?;
            tx.send((n, img, labels)).map_err(|_| famix::Error::msg("the video writer stopped"))?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// The writer thread of one video: colour maps and overlays into the encoders, frame
/// PNGs into `<stem>/<frame>_*.png`, in frame order.
fn write_frames(
    rx: crossbeam_channel::Receiver<(u64, Image8, Image8)>,
    mut ov: Encoder,
    mut co: Option<Encoder>,
    frame_dir: Option<PathBuf>,
    palette: Vec<[u8; 3]>,
    format: IdFormat,
) -> Result<()> {
    for (i, img, labels) in rx {
        let color = colorize(&labels, &palette);
        ov.write(&overlay(&img, &color))?;
        if let Some(c) = co.as_mut() {
            c.write(&color)?;
        }
        if let Some(dir) = &frame_dir {
            write_outputs_as(&dir.join(format!("{i:06}")), &img, &labels, &palette, true, format)?;
        }
    }
    ov.finish()?;
    if let Some(c) = co {
        c.finish()?;
    }
    Ok(())
}

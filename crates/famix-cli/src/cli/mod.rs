//! The `famix` command line: one subcommand per job.

mod bench;
mod bench_run;
mod clip_cmds;
mod clip_pretrain;
mod data;
mod demo;
mod eval;
mod export;
mod predict;
mod progress;
mod reference;
mod report;
mod serve;
mod serve_auth;
mod serve_net;
mod styles;
mod synth;
mod train;
mod video;
mod writers;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "famix",
    version,
    about = "FAMix: language-guided domain-generalised semantic segmentation (CLIP ResNet + DeepLabv3+, libtorch)",
    long_about = None,
    // A flag given twice takes its last value (scripts can append overrides).
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the big argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The paper's ablation in miniature: a procedural driving world, a CLIP pretrained on its captions, six recipes x three seeds (about 15 minutes on a 2-core CPU).
    Demo(demo::DemoArgs),
    /// Print CLIP image embeddings of images (one JSON line per image).
    EncodeImage(clip_cmds::EncodeImageArgs),
    /// Print CLIP text embeddings (one JSON line per text).
    EncodeText(clip_cmds::EncodeTextArgs),
    /// Print CLIP BPE token ids (one JSON line per text).
    Tokenize(clip_cmds::TokenizeArgs),
    /// Zero-shot classification of images against text labels (CLIP sanity check).
    ZeroShot(clip_cmds::ZeroShotArgs),
    /// Pretrain (or fine-tune) a CLIP ResNet on image–caption pairs (contrastive loss, learnt temperature, AdamW; resumable).
    ClipPretrain(clip_pretrain::PretrainArgs),
    /// Download an OpenAI CLIP ResNet checkpoint (SHA-256 verified, resumable).
    DownloadClip(clip_cmds::DownloadArgs),
    /// Segment images: train-id PNGs, colour maps and overlays.
    Predict(predict::PredictArgs),
    /// Convert a reference FAMix .pth checkpoint into a famix checkpoint.
    ImportCheckpoint(predict::ImportArgs),
    /// Export a segmenter as an ONNX graph (BatchNorm folded; dynamic batch/height/width) for ONNX Runtime, TensorRT, ...
    Export(export::ExportArgs),
    /// Measure the activation ranges int8 inference needs (--int8 of predict, eval, serve, bench, export) on a few source-domain images.
    Calibrate(export::CalibrateArgs),
    /// Evaluate a checkpoint on a dataset split (mIoU, per-class IoU, accuracy).
    Eval(eval::EvalArgs),
    /// Dataset utilities.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Mine per-class styles from text prompts with CLIP (patch-wise PIN) into a style bank.
    MineStyles(styles::MineArgs),
    /// Inspect or import style banks.
    #[command(subcommand)]
    Styles(styles::StylesCommand),
    /// Train a segmenter with local style mixing (resumable).
    Train(train::TrainArgs),
    /// Write an HTML report of a training run: loss, learning rates, validation mIoU, per-class IoU, confusion matrix, sample predictions.
    Report(report::ReportArgs),
    /// Time training, inference, style mining and data loading (JSON with --json).
    Bench(bench::BenchArgs),
    /// Serve segmentation over HTTP (JSON/PNG API, a web page, Prometheus metrics).
    Serve(serve::ServeArgs),
    /// Write the guide's command reference (Markdown) and the man pages from these definitions.
    #[command(hide = true)]
    Reference(reference::ReferenceArgs),
}

/// Runs the CLI; returns the process exit code. Errors print their whole cause chain.
/// A panic (a famix bug: every user value should be refused with an error first) is
/// caught at the command boundary and reported in one line, never as an abort with a
/// C++ backtrace.
pub fn main() -> i32 {
    let cli = Cli::parse();
    static PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let line = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        *PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{line}{at}"));
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli.command))) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            let mut chain = e.chain().map(in_flags);
            eprintln!("error: {}", chain.next().unwrap_or_default());
            for cause in chain {
                eprintln!("  caused by: {cause}");
            }
            1
        }
        Err(_) => {
            let msg = PANIC.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
            eprintln!("error: internal error: {msg}\n  this is a famix bug; please report it with the command that caused it");
            101
        }
    }
}

/// One error of a chain in the command line's words: a library setting is named by
/// its flag (`lr: ...` → `--lr: ...`, "a lower `lr`" → "a lower --lr").
fn in_flags(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<famix::Error>() {
        Some(famix::Error::InvalidSetting { name, problem }) => format!("{}: {}", famix::error::setting_flag(name), flags_in(problem)),
        _ => flags_in(&e.to_string()),
    }
}

/// A library text in the command line's words: a setting the library names in
/// backticks (`` `no_styles` ``: a lowercase word with underscores) becomes its flag
/// (`--no-styles`); other backticked text (`` `famix report` ``) stays as it is.
pub fn flags_in(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    let is_setting = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let mut out = String::with_capacity(text.len());
    for (i, p) in parts.iter().enumerate() {
        let quoted = i % 2 == 1 && i + 1 < parts.len();
        match (i % 2 == 1, quoted && is_setting(p)) {
            (_, true) => out.push_str(&famix::error::setting_flag(p)),
            (true, false) if quoted => out.push_str(&format!("`{p}`")),
            (true, false) => out.push_str(&format!("`{p}")),
            (false, _) => out.push_str(p),
        }
    }
    out
}

fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Demo(a) => demo::demo(a),
        Command::EncodeImage(a) => clip_cmds::encode_image(a),
        Command::EncodeText(a) => clip_cmds::encode_text(a),
        Command::Tokenize(a) => clip_cmds::tokenize(a),
        Command::ZeroShot(a) => clip_cmds::zero_shot(a),
        Command::DownloadClip(a) => clip_cmds::download(a),
        Command::ClipPretrain(a) => clip_pretrain::clip_pretrain(a),
        Command::Predict(a) => predict::predict(a),
        Command::ImportCheckpoint(a) => predict::import(a),
        Command::Eval(a) => eval::eval(a),
        Command::Export(a) => export::export(a),
        Command::Calibrate(a) => export::calibrate(a),
        Command::Data(c) => data::data(c),
        Command::MineStyles(a) => styles::mine_styles(a),
        Command::Styles(c) => styles::styles(c),
        Command::Train(a) => train::train(a),
        Command::Report(a) => report::report(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Reference(a) => reference::reference(a),
    }
}

/// A default for help text: plain below a million and above a thousandth, else in
/// exponent form (`0.0005`, `1e-8`).
pub fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `--device` help shared by the subcommands that compute.
pub const DEVICE_HELP: &str = "Device: auto (first CUDA GPU if any, else CPU), cpu, cuda or cuda:N";

/// `--device`, parsed once into a device (the one definition every subcommand flattens).
#[derive(clap::Args, Clone, Copy)]
pub struct DeviceArgs {
    #[arg(long = "device", default_value = "auto", value_parser = parse_device_flag, help = DEVICE_HELP)]
    pub device: tch::Device,
}

fn parse_device_flag(s: &str) -> Result<tch::Device, String> {
    famix::device::parse_device(s).map_err(|e| e.to_string())
}

/// Test-time options shared by `predict` and `eval`.
#[derive(clap::Args)]
pub struct TestTimeArgs {
    /// Test scale (e.g. 0.5): resize the input, predict, resize the logits back (align_corners=true, as the reference's evaluation)
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Average the logits of scale 1 and --scale
    #[arg(long)]
    pub ensemble: bool,
    /// Output stride 8, 16 or 32 (default: the checkpoint's; 16 for reference .pth files)
    #[arg(long)]
    pub output_stride: Option<i64>,
    /// bf16 autocast: faster on GPUs and on CPUs with AVX512-BF16/AMX; fp32 is the reference's precision
    #[arg(long, value_parser = choice::<famix::Precision>(), default_value = "fp32")]
    pub amp: famix::Precision,
    /// Run the plain network (conv then batch norm, as the reference) instead of the fast path (batch norms folded into the convolutions, channels-last)
    #[arg(long, alias = "no-fuse")]
    pub no_fold: bool,
    #[command(flatten)]
    pub numerics: NumericsArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `--engine` and `--int8`, shared by predict, eval and serve.
#[derive(clap::Args, Clone)]
pub struct EngineArgs {
    /// Inference engine: auto (ONNX Runtime for fp32 on the CPU when installed, else libtorch), torch, or onnxruntime (CPU, fp32; famix's own ONNX graph built in memory). Default: auto for serve and for predict jobs of 16 images or more (or videos; building the ONNX Runtime session takes seconds), torch otherwise and for eval, so its metrics are libtorch's exactly
    #[arg(long, value_parser = choice::<famix::engine::Engine>())]
    pub engine: Option<famix::engine::Engine>,
    /// int8 convolutions on ONNX Runtime (CPU), quantised with the activation ranges in this file (from `famix calibrate`): about 2.5x faster than fp32 on a CPU with VNNI, not exact (check the agreement with `famix bench --int8 FILE --checkpoint ... --image ...`)
    #[arg(long, value_name = "CALIBRATION")]
    pub int8: Option<std::path::PathBuf>,
}

impl EngineArgs {
    /// Puts `model`'s inference on the chosen engine (`default` when none is given);
    /// says on stderr when auto falls back to libtorch, and returns the engine's name.
    pub fn attach(
        &self,
        model: &mut famix::Segmenter,
        precision: famix::Precision,
        default: famix::engine::Engine,
    ) -> anyhow::Result<&'static str> {
        if let Some(path) = &self.int8 {
            if self.engine == Some(famix::engine::Engine::Torch) || precision != famix::Precision::Fp32 {
                anyhow::bail!("--int8 runs on ONNX Runtime: it excludes --engine torch and --amp bf16");
            }
            famix::engine::attach_int8(model, &famix::engine::calibration::Calibration::load(path)?)?;
            return Ok(model.engine_name());
        }
        let (engine, note) = famix::engine::attach(model, self.engine.unwrap_or(default), precision)?;
        if let Some(n) = note {
            eprintln!("note: --engine auto: {n}");
        }
        Ok(engine.name())
    }
}

impl TestTimeArgs {
    /// Applies --deterministic / --no-tf32, switches `model` to the fast path unless
    /// `--no-fold`, lets cuDNN pick its fastest kernels for the sizes that repeat, and
    /// attaches the --engine.
    pub fn prepare(&self, model: &mut famix::Segmenter, engine: famix::engine::Engine) -> anyhow::Result<()> {
        self.numerics.apply()?;
        if !self.no_fold {
            model.fold();
        }
        famix::device::tune_for_repeated_sizes(model.device());
        self.engine.attach(model, self.amp, engine)?;
        Ok(())
    }
    /// The output stride asked for, if any.
    pub fn output_stride(&self) -> anyhow::Result<Option<famix::clip::OutputStride>> {
        Ok(self.output_stride.map(famix::clip::OutputStride::from_int).transpose()?)
    }
    /// The library's test-time options (validated).
    pub fn predict_options(&self) -> anyhow::Result<famix::PredictOptions> {
        let o = famix::PredictOptions { scale: self.scale, ensemble: self.ensemble, precision: self.amp, keep_logits: false };
        o.validate()?;
        Ok(o)
    }
}

/// `--classes FILE` of the commands given a checkpoint: the class file it must have
/// been trained with (its own classes when not given).
#[derive(clap::Args, Clone)]
pub struct ModelClassesArgs {
    /// Class file (JSON) the checkpoint was trained with; one that names, colours or prompts other classes is refused, naming the differences [default: the checkpoint's own classes]
    #[arg(long, value_name = "FILE")]
    pub classes: Option<std::path::PathBuf>,
}

impl ModelClassesArgs {
    /// The classes to use with `model` (loaded from `checkpoint`): the class file's
    /// when it agrees with the model's, else an error naming the differences.
    pub fn resolve(&self, model: &famix::Segmenter, checkpoint: &std::path::Path) -> anyhow::Result<famix::data::classes::ClassSet> {
        let given = match &self.classes {
            Some(p) => Some((p.as_path(), famix::data::classes::ClassSet::from_file(p)?)),
            None => None,
        };
        Ok(famix::data::classes::agree(&model.config().classes, given, checkpoint)?)
    }
}

/// A class file given with `--classes`, or Cityscapes' classes.
pub fn class_set(path: &Option<std::path::PathBuf>) -> anyhow::Result<famix::data::classes::ClassSet> {
    Ok(match path {
        Some(p) => famix::data::classes::ClassSet::from_file(p)?,
        None => famix::data::classes::ClassSet::cityscapes(),
    })
}

/// Options of the jobs that stream a dataset through a model (`mine-styles`, `train`).
#[derive(clap::Args)]
pub struct DataJobArgs {
    /// Replace unreadable samples by the next readable one (each reported once) instead of stopping
    #[arg(long)]
    pub skip_bad: bool,
    /// Data-loading threads (default: cores - 1)
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl DataJobArgs {
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(famix::data::prefetch::default_workers)
    }
}

/// `--deterministic` and `--no-tf32`: how exactly CUDA computes (shared by train,
/// mine-styles, eval and predict; the CPU is deterministic and IEEE fp32 always).
#[derive(clap::Args, Clone, Copy)]
pub struct NumericsArgs {
    /// CUDA: deterministic kernels (PyTorch's deterministic-algorithms mode, cuDNN deterministic, cuDNN benchmark off), so a run repeats bit for bit; slower. The CPU is deterministic without it
    #[arg(long)]
    pub deterministic: bool,
    /// CUDA: fp32 convolutions and matmuls in IEEE fp32 instead of TF32 (libtorch's default for convolutions, about 1e-3 relative)
    #[arg(long)]
    pub no_tf32: bool,
}

impl NumericsArgs {
    pub fn numerics(&self) -> famix::device::Numerics {
        famix::device::Numerics { deterministic: self.deterministic, tf32: !self.no_tf32 }
    }

    /// Applies the flags to this process (for commands whose library call takes no
    /// numerics: eval, predict).
    pub fn apply(&self) -> anyhow::Result<famix::device::Numerics> {
        let n = self.numerics();
        cublas_workspace_for(n);
        n.apply()?;
        Ok(n)
    }
}

/// Sets the cuBLAS workspace that deterministic CUDA matmuls need when `n` asks for
/// determinism (read by PyTorch when a matmul runs; set here, before any worker thread
/// exists, unless the user set it). The library applies the rest of `n` itself where
/// its settings carry it (train, mine-styles).
pub fn cublas_workspace_for(n: famix::device::Numerics) {
    if let Some((var, value)) = n.cublas_env() {
        std::env::set_var(var, value);
    }
}

/// `--shard I/N | auto` and `--shards N`, shared by predict, eval and mine-styles.
#[derive(clap::Args, Clone)]
pub struct ShardArgs {
    /// Do part I of an N-way split (items with index ≡ I mod N, 0-based), or `auto`: from Slurm (SLURM_ARRAY_TASK_ID/_MIN/_COUNT) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --shards)
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// The shard count for `--shard auto` (required on Kubernetes; overrides SLURM_ARRAY_TASK_COUNT)
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

impl ShardArgs {
    /// The shard of this task, if the job is split.
    pub fn shard(&self) -> anyhow::Result<Option<famix::shard::Shard>> {
        Ok(famix::shard::Shard::from_flags(self.shard.as_deref(), self.shards)?)
    }
}

/// Where a resumable job writes and with which settings: with `--resume RUN`, the
/// run's saved configuration (`fixed`: the flags given that define a run, refused by
/// name; `extend` turns it into the resumed one, e.g. with `--iters` applied); else a
/// new run into `out` with `new()`'s configuration, refused if `out` already holds a
/// checkpoint unless `--force`; `--resume RUN --force` starts RUN over with its saved configuration.
/// Returns (configuration, run folder, resume).
pub fn run_target<C: serde::de::DeserializeOwned>(
    resume: Option<&std::path::PathBuf>,
    out: Option<&std::path::PathBuf>,
    force: bool,
    fixed: &[&str],
    extend: impl FnOnce(C) -> anyhow::Result<C>,
    new: impl FnOnce() -> anyhow::Result<C>,
) -> anyhow::Result<(C, std::path::PathBuf, bool)> {
    use famix::io::run_folder::{read_config, RunFolder};
    if let Some(run) = resume {
        if !fixed.is_empty() {
            anyhow::bail!(
                "{} cannot change with --resume: a run keeps its settings in {} (only --iters may extend it; start a new run with --out to change them)",
                fixed.join(", "),
                RunFolder::new(run).config().display()
            );
        }
        let cfg = extend(read_config(&RunFolder::new(run))?)?;
        // --resume with --force: the same settings, from the start.
        return Ok((cfg, run.clone(), !force));
    }
    let out = out.ok_or_else(|| anyhow::anyhow!("--out is needed for a new run"))?;
    if RunFolder::new(out).latest().exists() && !force {
        anyhow::bail!("{} already holds a run: continue it with --resume {}, or pass --force to start over", out.display(), out.display());
    }
    Ok((new()?, out.clone(), false))
}

/// A clap parser for a library setting with named variants ([`famix::Named`]): the
/// same words as configuration files, listed in `--help`.
pub fn choice<T: famix::Named + Send + Sync>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(T::ALL.iter().map(|v| v.name()))
        .map(|s: String| T::parse(&s).expect("clap only passes the listed names"))
}

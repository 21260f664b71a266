//! `famix train`.

use std::path::PathBuf;

use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Arg, ArgAction, ArgMatches, Args};
use serde_json::Value;

use famix::train::settings::Ty;
use famix::train::{check_config, train as run_training};
use famix::train::{Given, RunOptions, Setting, TrainConfig, SETTINGS};

#[derive(Args)]
pub struct TrainArgs {
    /// Run folder: config.json, train_log.jsonl, latest.* and best.* checkpoints
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (settings come from it)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The run's settings, one flag each, from the library's declarations
    /// (`famix::train::settings`).
    #[command(flatten)]
    settings: SettingFlags,
    /// Stop after N iterations in this invocation (checkpointed; continue with --resume)
    #[arg(long)]
    stop_after: Option<u64>,
    /// Start over even if the run folder has checkpoints (with --resume: from iteration 0 with the run's saved settings; the log is rewritten)
    #[arg(long, conflicts_with = "from_best")]
    force: bool,
    /// Also write TensorBoard event files (loss, learning rates, images/s, val mIoU, per-class IoU) to DIR [default: RUN_DIR/tensorboard]
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    tensorboard: Option<Option<PathBuf>>,
    /// Run the plain network instead of the training fast path (frozen layers with folded batch norms, channels-last)
    #[arg(long, alias = "no-fuse")]
    no_fold: bool,
    /// With --resume: continue even when the checkpoint's optimiser state (SGD momentum) is missing or does not fit, with fresh momentum; the run then differs from an uninterrupted one
    #[arg(long, requires = "resume")]
    reset_optimizer: bool,
    /// With --resume: continue from the run's best checkpoint (its weights and iteration, fresh SGD momentum) instead of its latest, e.g. when latest.safetensors was lost; the log records it
    #[arg(long, requires = "resume")]
    from_best: bool,
    #[command(flatten)]
    job: super::DataJobArgs,
}

/// `famix train`'s flags for the training settings, built from the library's table
/// ([`SETTINGS`]): a flag per setting with its name in hyphens, its documentation and
/// its default. Written by hand (clap's `Args`) because clap's derive needs the flags
/// as struct fields, which would declare every setting a second time.
#[derive(Clone, Default)]
pub struct SettingFlags(Given);

fn setting_arg(s: &'static Setting) -> Arg {
    let mut help = super::flags_in(s.doc);
    if let Some(d) = s.default_text() {
        help.push_str(&format!(" [default: {d}]"));
    }
    let value_name = s.value_name.map(String::from).unwrap_or_else(|| s.name.to_uppercase());
    let arg = Arg::new(s.name).long(s.name.replace('_', "-")).help(help).value_name(value_name);
    let arg = if s.required { arg.required_unless_present("resume") } else { arg };
    match s.ty {
        Ty::Switch => arg.action(ArgAction::SetTrue),
        Ty::Choice(names) => arg.value_parser(PossibleValuesParser::new(names()).map(Value::String)),
        Ty::Sets => arg.action(ArgAction::Append).value_parser(move |t: &str| parse_value(s, t)),
        _ => arg.value_parser(move |t: &str| parse_value(s, t)),
    }
}

/// A flag's text as the setting's value; the problem alone (clap names the flag).
fn parse_value(s: &'static Setting, text: &str) -> Result<Value, String> {
    s.parse(text).map_err(|e| match e {
        famix::Error::InvalidSetting { problem, .. } => problem,
        e => e.to_string(),
    })
}

impl clap::FromArgMatches for SettingFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = SettingFlags::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        let invalid = |e: famix::Error| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e.to_string());
        for s in SETTINGS {
            let values: Vec<Value> = match s.ty {
                Ty::Switch => m.get_flag(s.name).then_some(Value::Bool(true)).into_iter().collect(),
                _ => m.get_many::<Value>(s.name).map(|v| v.cloned().collect()).unwrap_or_default(),
            };
            for v in values {
                self.0.set(s.name, v).map_err(invalid)?;
            }
        }
        Ok(())
    }
}

impl clap::Args for SettingFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(SETTINGS.iter().map(setting_arg))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The flags of settings in `names`.
fn flags(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| famix::error::setting_flag(n)).collect()
}

pub fn train(a: TrainArgs) -> Result<i32> {
    let given = &a.settings.0;
    let mut fixed = flags(&given.fixed_on_resume());
    if a.resume.is_some() && a.out.is_some() {
        fixed.insert(0, "--out".into());
    }
    let fixed: Vec<&str> = fixed.iter().map(String::as_str).collect();
    let extend = |saved: TrainConfig| Ok(given.resumed(saved)?);
    let (cfg, run, resume) = super::run_target(a.resume.as_ref(), a.out.as_ref(), a.force, &fixed, extend, || Ok(given.new_config()?))?;
    check_config(&cfg)?;
    // The library applies the run's numerics; the binary adds cuBLAS's environment setting.
    super::cublas_workspace_for(cfg.numerics);
    let tensorboard = a.tensorboard.clone().map(|d| d.unwrap_or_else(|| run.join("tensorboard")));
    let opts = RunOptions {
        device: a.job.device.device,
        workers: a.job.workers(),
        stop_after: a.stop_after,
        skip_bad: a.job.skip_bad,
        tensorboard,
        no_fold: a.no_fold,
        reset_optimizer: a.reset_optimizer,
        from_best: a.from_best,
    };
    eprintln!(
        "training {} → {} ({} iterations, batch {}, crop {}, {:?}, freeze {})",
        cfg.dataset.name(),
        run.display(),
        cfg.iters,
        cfg.batch,
        cfg.crop,
        cfg.style_mode,
        cfg.freeze.name()
    );
    let s = run_training(&cfg, &run, resume, &opts, &super::progress::Bars::default())?;
    eprintln!(
        "stopped at iteration {} of {}; last loss {}; best val mIoU {}; checkpoints in {}",
        s.steps,
        cfg.iters,
        s.last_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        s.best_miou.map(|m| format!("{:.2} %", m * 100.0)).unwrap_or_else(|| "-".into()),
        run.display()
    );
    println!("{}", serde_json::to_string(&s)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn given(args: &[&str]) -> Result<Given, clap::Error> {
        let m = Cli::command().try_get_matches_from(std::iter::once("famix").chain(args.iter().copied()))?;
        Ok(Cli::from_arg_matches(&m)?.train.settings.0)
    }

    /// Flags become the library's values: switches, numbers, choices, repeated sets.
    #[test]
    fn flags_become_the_settings_given() {
        let g = given(&["--out", "o", "--clip", "c", "--dataset", "folder", "--data-root", "d", "--batch", "4", "--no-mix"]).unwrap();
        assert_eq!(g.names(), ["clip", "dataset", "data_root", "batch", "no_mix"]);
        assert_eq!(g.get("batch"), Some(&Value::from(4u64)));
        let g = given(&["--resume", "r", "--monitor", "a=folder:x", "--monitor", "b=folder:y"]).unwrap();
        assert_eq!(g.get("monitor").and_then(Value::as_object).map(|o| o.len()), Some(2));
        let e = given(&["--resume", "r", "--batch=-3"]).err().unwrap().to_string();
        assert!(e.contains("--batch") && e.contains("whole number"), "{e}");
        let e = given(&["--resume", "r", "--monitor", "dusk"]).err().unwrap().to_string();
        assert!(e.contains("NAME=DATASET:ROOT"), "{e}");
        assert!(given(&["--out", "o"]).is_err(), "a new run needs --clip, --dataset, --data-root");
    }
}

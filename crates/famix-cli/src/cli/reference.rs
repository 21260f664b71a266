//! `famix reference` (hidden): writes the command reference of the user guide (one
//! Markdown page per subcommand, each the subcommand's own `--help` text) and the man
//! pages (clap_mangen), both generated from the same clap definitions the binary
//! parses with, so the guide and `--help` cannot disagree. A test regenerates both and
//! compares them with the committed files (`docs/src/reference/`, `docs/man/`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

#[derive(Args)]
pub struct ReferenceArgs {
    /// Folder for the Markdown pages (one per subcommand, and index.md)
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Folder for the man pages (famix.1, famix-SUBCOMMAND.1, ...)
    #[arg(long)]
    man: Option<PathBuf>,
}

/// The help text's width, fixed so the pages do not depend on the terminal.
const WIDTH: usize = 100;

pub fn reference(a: ReferenceArgs) -> Result<i32> {
    let mut cmd = super::Cli::command().term_width(WIDTH).max_term_width(WIDTH);
    cmd.build();
    if let Some(dir) = &a.markdown {
        write_markdown(&cmd, dir)?;
    }
    if let Some(dir) = &a.man {
        write_man(&cmd, dir)?;
    }
    Ok(0)
}

/// The subcommands users see (not `help`, not hidden ones).
fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn write(path: &Path, text: &str) -> Result<()> {
    famix::io::atomic_write(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// `famix-<name>.md` per subcommand (nested subcommands on their parent's page) and an
/// index listing them.
fn write_markdown(root: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut index = String::from(
        "# Command reference\n\n\
         Generated from `famix --help` and each subcommand's `--help` (`make reference`); a test fails when\n\
         these pages differ from what the binary prints. Man pages with the same text are in `docs/man/`.\n\n\
         | command | what it does |\n|---|---|\n",
    );
    for sub in visible(root) {
        let file = format!("famix-{}.md", sub.get_name());
        index.push_str(&format!("| [`famix {}`]({file}) | {} |\n", sub.get_name(), about(sub)));
        let mut page = String::new();
        section(&mut page, sub, &format!("famix {}", sub.get_name()), 1);
        write(&dir.join(file), &page)?;
    }
    index.push_str(&format!("\n## famix\n\n```text\n{}```\n", help(root)));
    write(&dir.join("index.md"), &index)
}

/// One command's heading and help text, then its subcommands one level down.
fn section(page: &mut String, cmd: &clap::Command, path: &str, level: usize) {
    page.push_str(&format!("{} `{path}`\n\n", "#".repeat(level)));
    page.push_str(&format!("```text\n{}```\n", help(cmd)));
    for sub in visible(cmd) {
        page.push('\n');
        section(page, sub, &format!("{path} {}", sub.get_name()), level + 1);
    }
}

fn help(cmd: &clap::Command) -> String {
    let text = cmd.clone().render_long_help().to_string();
    let text: String = text.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    text
}

fn about(cmd: &clap::Command) -> String {
    cmd.get_about().map(|a| a.to_string().replace('|', "\\|")).unwrap_or_default()
}

/// `famix.1` and `famix-<path>.1` for every subcommand, nested ones included.
fn write_man(root: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    man_page(root, "famix", dir)
}

fn man_page(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let named = cmd.clone().name(name.to_string()).bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(named).render(&mut buf)?;
    famix::io::atomic_write(&dir.join(format!("{name}.1")), &buf)?;
    for sub in visible(cmd) {
        man_page(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

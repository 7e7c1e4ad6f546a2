//! The conventions of a command-line tool that are not about documents:
//! shell completions and manual pages generated from the clap definitions,
//! `config init`, and whether to colour (`NO_COLOR`).
//!
//! Owns: writing those out. Must not: read the configuration (these commands
//! run before it is loaded, so a broken `datafactory.toml` cannot stop
//! `config init` from writing a good one) or define commands (main.rs does).

use crate::config_reference;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Colour in the log on standard error: by the rule clap applies to its help
/// and errors (anstream): never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>), always with `CLICOLOR_FORCE`, else on a terminal
/// that is not `TERM=dumb`. The progress bars (indicatif, through console)
/// draw no colour and honour `NO_COLOR` too.
pub fn colour_on_stderr() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
}

/// `datafactory completions SHELL`: the completion script on `out`.
pub fn completions(
    shell: clap_complete::Shell,
    cli: &mut clap::Command,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    clap_complete::generate(shell, cli, "datafactory", out);
    Ok(ExitCode::SUCCESS)
}

/// `datafactory man`: the top page (which lists the commands) on standard
/// output, or with `out_dir` one page per command there.
pub fn man(cli: clap::Command, out_dir: Option<&Path>) -> Result<ExitCode> {
    match out_dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli).render(&mut page).context("cannot render the manual page")?;
            std::io::stdout().write_all(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cli, dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            println!("wrote the manual pages into {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `datafactory config init [PATH] [--force]`: every key at its default under
/// its meaning, from docs/CONFIGURATION.md. `-` writes to standard output.
pub fn config_init(path: Option<&Path>, force: bool) -> Result<ExitCode> {
    let text = config_reference::render_init(&config_reference::sections());
    let path = path.unwrap_or(Path::new(datafactory_core::config::DEFAULT_CONFIG_FILE));
    if path == Path::new("-") {
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // Checked and created in one step: nothing is overwritten by a race.
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} already exists; keep it, or overwrite it with --force", path.display())
        }
        _ => anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
    })?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    let used = if path == Path::new(datafactory_core::config::DEFAULT_CONFIG_FILE) {
        "commands run in this folder read it".to_string()
    } else {
        format!("use it with --config {} (or DATAFACTORY_CONFIG)", path.display())
    };
    println!("wrote {}: every key at its default; {used}", path.display());
    Ok(ExitCode::SUCCESS)
}

//! The conventions of a command-line tool, on the real binary: `--version`
//! with the commit and features, shell completions, the manual page,
//! `config init`, and `NO_COLOR`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The binary with no configuration around it (run in `dir`, no
/// `DATAFACTORY_*` variables), for commands that need no store.
fn bare(dir: &Path) -> Command {
    let mut cmd = datafactory(&dir.join("data"));
    cmd.env_remove("DATAFACTORY_EMBEDDING__MODEL");
    cmd
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `git` in the crate's folder, if it answers.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[test]
fn version_names_the_commit_and_the_features() {
    let tmp = tempfile::tempdir().unwrap();
    let version = stdout_of(bare(tmp.path()).arg("--version"));
    // The commit this checkout is at; "unknown" where git or the checkout is absent.
    let commit = git(&["ls-files", "--error-unmatch", "src/main.rs"])
        .and_then(|_| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    let features = if cfg!(feature = "cuda") { "cuda" } else { "none" };
    assert_eq!(
        version.trim_end(),
        format!("datafactory {} (commit {commit}, features: {features})", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(stdout_of(bare(tmp.path()).arg("-V")), version);
}

#[test]
fn completions_are_scripts_that_name_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = stdout_of(bare(tmp.path()).args(["completions", "bash"]));
    assert!(bash.contains("complete -F") && bash.contains("datafactory"), "{bash}");
    for command in ["ingest", "search", "stats", "config", "completions", "man"] {
        assert!(bash.contains(command), "bash completion lacks {command}");
    }
    assert!(bash.contains("--collection") && bash.contains("init"), "subcommands' flags and commands");
    let zsh = stdout_of(bare(tmp.path()).args(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef datafactory") && zsh.contains("ingest"), "{zsh}");
    let fish = stdout_of(bare(tmp.path()).args(["completions", "fish"]));
    assert!(fish.contains("complete -c datafactory") && fish.contains("search"), "{fish}");
    for shell in ["elvish", "powershell"] {
        assert!(stdout_of(bare(tmp.path()).args(["completions", shell])).contains("datafactory"), "{shell}");
    }
    let out = run(bare(tmp.path()).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn the_manual_page_is_roff_naming_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let page = stdout_of(bare(tmp.path()).arg("man"));
    assert!(page.contains(".TH datafactory 1"), "{page}");
    assert!(page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"), "{page}");
    for command in ["ingest", "search", "stats", "serve", "config", "completions"] {
        assert!(page.contains(&format!("datafactory\\-{command}(1)")), "the page does not name {command}");
    }
    assert!(page.contains(&format!("v{}", env!("CARGO_PKG_VERSION"))), "{page}");

    let dir = tmp.path().join("man1");
    stdout_of(bare(tmp.path()).arg("man").arg("--out-dir").arg(&dir));
    for name in
        ["datafactory.1", "datafactory-ingest.1", "datafactory-config-init.1", "datafactory-documents-list.1"]
    {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.starts_with(".ie \\n(.g .ds Aq") || text.contains(".TH "), "{name}: {text}");
    }
    let ingest = std::fs::read_to_string(dir.join("datafactory-ingest.1")).unwrap();
    assert!(ingest.contains("all\\-files"), "{ingest}");
}

#[test]
fn config_init_writes_the_defaults_commented_and_keeps_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let defaults = stdout_of(bare(tmp.path()).args(["config", "show"]));

    // Into ./datafactory.toml by default, which every command then reads.
    let said = stdout_of(bare(tmp.path()).args(["config", "init"]));
    assert!(said.contains("datafactory.toml"), "{said}");
    let file = tmp.path().join("datafactory.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("# Upper bound on a chunk's tokens; at least 16.\nmax_tokens = 512\n"), "{text}");
    assert!(text.contains("\n[embedding]\n") && text.contains("model = \"BAAI/bge-m3\""), "{text}");
    assert!(text.contains("# [[enrichment.endpoints]]"), "{text}");
    assert_eq!(stdout_of(bare(tmp.path()).args(["config", "show"])), defaults, "read from the folder");

    // Elsewhere, loaded with --config: the same configuration as none at all.
    let other = tmp.path().join("etc").join("df.toml");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::remove_file(&file).unwrap();
    stdout_of(bare(tmp.path()).args(["config", "init"]).arg(&other));
    assert_eq!(stdout_of(bare(tmp.path()).arg("--config").arg(&other).args(["config", "show"])), defaults);
    // A changed key in it is read (the file is not ignored).
    let changed = std::fs::read_to_string(&other).unwrap().replace("max_tokens = 512", "max_tokens = 300");
    std::fs::write(&other, &changed).unwrap();
    let shown = stdout_of(bare(tmp.path()).arg("--config").arg(&other).args(["config", "show"]));
    assert!(shown.contains("max_tokens = 300"), "{shown}");

    // An existing file is kept, with an error naming it and --force.
    let out = run(bare(tmp.path()).args(["config", "init"]).arg(&other));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(other.to_str().unwrap()) && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), changed);
    // --force overwrites it with the defaults.
    stdout_of(bare(tmp.path()).args(["config", "init", "--force"]).arg(&other));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), text);

    // A broken ./datafactory.toml does not stop init (it reads no configuration).
    std::fs::write(&file, "[chunking]\nmax_tokns = 1\n").unwrap();
    assert_eq!(stdout_of(bare(tmp.path()).args(["config", "init", "-"])), text);
    assert_eq!(run(bare(tmp.path()).args(["config", "show"])).status.code(), Some(1));
}

/// `cmd`'s standard error when it is a terminal (a pseudo-terminal).
fn stderr_on_a_terminal(mut cmd: Command) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut main, mut other) = (-1, -1);
    // Safety: openpty writes two descriptors into the integers given.
    let rc = unsafe {
        libc::openpty(&mut main, &mut other, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // Safety: both descriptors were just opened and are owned here alone.
    let (main, other) = unsafe { (OwnedFd::from_raw_fd(main), OwnedFd::from_raw_fd(other)) };
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(other);
    let mut child = cmd.spawn().unwrap();
    // The command held the terminal's other end: dropped, reading ends when the child's ends.
    drop(cmd);
    let mut reader = std::fs::File::from(main);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // Linux answers EIO once the other end is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
    child.wait().unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Has an SGR escape sequence (colour, bold): ESC [ digits and ; then m.
fn coloured(text: &str) -> bool {
    text.split('\u{1b}').skip(1).any(|rest| {
        rest.strip_prefix('[')
            .and_then(|r| r.find(|c: char| !(c.is_ascii_digit() || c == ';')).map(|end| (r, end)))
            .is_some_and(|(r, end)| r[end..].starts_with('m'))
    })
}

#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_cache = tmp.path().join("hf-cache");
    std::fs::create_dir_all(&empty_cache).unwrap();
    let run_on_terminal = |args: &[&str], no_color: bool| {
        let mut cmd = bare(tmp.path());
        // A model that cannot be had, so the log says why (at info level, -v).
        cmd.env("DATAFACTORY_EMBEDDING__MODEL", "BAAI/bge-m3")
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", &empty_cache)
            .env("TERM", "xterm-256color")
            .env_remove("CLICOLOR")
            .env_remove("CLICOLOR_FORCE")
            .env_remove("NO_COLOR")
            .args(args);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        stderr_on_a_terminal(cmd)
    };
    let sample = fixtures().join("sample.md");
    let ingest = ["-v", "ingest", sample.to_str().unwrap()];
    // The log: coloured on a terminal, plain with NO_COLOR; the same words.
    let with = run_on_terminal(&ingest, false);
    assert!(with.contains("the embedding model cannot be loaded"), "{with}");
    assert!(coloured(&with), "no colour on a terminal: {with:?}");
    let without = run_on_terminal(&ingest, true);
    assert!(without.contains("the embedding model cannot be loaded"), "{without}");
    assert!(!coloured(&without), "colour despite NO_COLOR: {without:?}");
    // clap's errors follow the same rule.
    let with = run_on_terminal(&["--no-such-flag"], false);
    assert!(with.contains("no-such-flag") && coloured(&with), "{with:?}");
    let without = run_on_terminal(&["--no-such-flag"], true);
    assert!(without.contains("no-such-flag") && !coloured(&without), "{without:?}");
}

#[test]
fn the_log_is_not_coloured_into_a_file_or_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_cache = tmp.path().join("hf-cache");
    std::fs::create_dir_all(&empty_cache).unwrap();
    let out = run(bare(tmp.path())
        .env("DATAFACTORY_EMBEDDING__MODEL", "BAAI/bge-m3")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &empty_cache)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .arg("-v")
        .arg("ingest")
        .arg(fixtures().join("sample.md")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO") && !coloured(&err), "{err:?}");
}

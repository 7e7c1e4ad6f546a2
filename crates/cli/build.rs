//! Records what `datafactory --version` reports besides the version: the git
//! commit the binary was built from and the enabled cargo features.
//!
//! The commit comes from the `git` program, and only when this crate is part
//! of the checkout it runs in; a build without git, from a tarball or from
//! `cargo install` of a package reports "unknown" and still builds.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_string());
    let commit = git_commit(Path::new(&dir)).unwrap_or_else(|| "unknown".to_string());
    // Not `DATAFACTORY_…`: `cargo run` also puts these variables in the
    // program's environment, where every `DATAFACTORY_` name is read as a
    // configuration key (and an unknown one refused).
    println!("cargo:rustc-env=DF_BUILD_GIT_COMMIT={commit}");

    // Cargo sets CARGO_FEATURE_<NAME> for each enabled feature of this crate.
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| {
            k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_ascii_lowercase().replace('_', "-"))
        })
        .collect();
    features.sort();
    let features = if features.is_empty() { "none".to_string() } else { features.join(",") };
    println!("cargo:rustc-env=DF_BUILD_FEATURES={features}");
}

/// `git` in `dir`: its trimmed output when it succeeds and says something.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The abbreviated commit of HEAD, when this crate's sources are tracked by
/// the repository around `dir` (a tarball unpacked inside some other
/// repository is not this project's checkout).
fn git_commit(dir: &Path) -> Option<String> {
    git(dir, &["ls-files", "--error-unmatch", "src/main.rs"])?;
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // Build again when HEAD moves: a checkout changes HEAD, a commit the
    // branch's ref (a loose file, or packed-refs once packed).
    let mut watched = vec![git(dir, &["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(dir, &["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(dir, &["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        let path = dir.join(path);
        // A path that does not exist would make cargo run this script on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}

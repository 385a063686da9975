//! Names the commit the binary is built from (`tandem --version`, `tandem_build_info`):
//! `TANDEM_COMMIT` if set (a build from a source archive), else git's, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TANDEM_COMMIT");
    let commit = std::env::var("TANDEM_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TANDEM_COMMIT={commit}");
    // A new commit moves the branch HEAD names (its ref file, or packed-refs) and HEAD's log;
    // only files that exist are watched (a missing one would run this script on every build).
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut watched = vec![
            "HEAD".to_owned(),
            "logs/HEAD".to_owned(),
            "packed-refs".to_owned(),
        ];
        if let Some(branch) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
            watched.push(branch);
        }
        let common = git(&["rev-parse", "--git-common-dir"]).map(std::path::PathBuf::from);
        for file in watched {
            for directory in [Some(std::path::PathBuf::from(&git_dir)), common.clone()]
                .into_iter()
                .flatten()
            {
                let path = directory.join(&file);
                if path.is_file() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
}

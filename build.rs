//! Records the commit this binary is built from (`LONGMEM_BUILD_COMMIT`), so that `longmem bench`
//! labels its figures with the code that produced them, not with whatever checkout it runs in.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            // Uncommitted changes to the code make it a different build from that commit.
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
                "build.rs",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}-dirty")
            } else {
                head
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=LONGMEM_BUILD_COMMIT={commit}");

    // Rebuilt on a new commit or checkout, and on changes to the code.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
        for file in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={}", dir.join(file).display());
        }
    }
    for path in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}

//! Compiles the XDP program (`bpf/cipgw.bpf.c`) with clang into
//! `$OUT_DIR/cipgw.bpf.o`, which `src/bpf/mod.rs` embeds with `include_bytes!`.
//!
//! The program needs only the kernel's uapi headers (Debian's
//! linux-libc-dev) and `bpf/cipgw_bpf.h`; it does not depend on a libbpf
//! installation. `CLANG` overrides the compiler.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "bpf/cipgw.bpf.c";
const OBJECT: &str = "cipgw.bpf.o";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    check_clang(&clang);
    git_hash(&manifest_dir);

    let bpf_dir = manifest_dir.join("bpf");
    let object = out_dir.join(OBJECT);
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg("-I")
        .arg(&bpf_dir);
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the
    // multiarch directory; `-target bpf` does not search it by itself.
    if let Some(dir) = multiarch_include_dir() {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c")
        .arg(manifest_dir.join(SOURCE))
        .arg("-o")
        .arg(&object);

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {clang} to build the XDP program: {e}"));
    if !output.status.success() {
        panic!(
            "compiling the XDP program {SOURCE} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Sets `CIPGW_GIT_HASH` to the checkout's commit (`unknown` when the
/// source is not a git checkout), and rebuilds when HEAD moves.
fn git_hash(manifest_dir: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CIPGW_GIT_HASH={hash}");
    // HEAD names the branch; the branch's ref (or packed-refs) moves with
    // each commit. In a worktree these live in different directories.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// Fails the build with an actionable message when clang is missing.
fn check_clang(clang: &str) {
    match Command::new(clang).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{clang} --version` failed ({}); cipgw needs clang to build its XDP program \
             (Debian: apt-get install clang llvm libelf-dev linux-libc-dev)",
            out.status
        ),
        Err(e) => panic!(
            "clang not found ({clang}: {e}); cipgw needs clang to build its XDP program \
             (Debian: apt-get install clang llvm libelf-dev linux-libc-dev), \
             or set CLANG to its path"
        ),
    }
}

/// `/usr/include/<arch>-linux-gnu` for the build host, when it exists.
fn multiarch_include_dir() -> Option<PathBuf> {
    // The BPF object is built for the machine the build runs on; the uapi
    // headers used are the host's.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple_arch = match arch.as_str() {
        "x86" => "i386",
        other => other,
    };
    let dir = Path::new("/usr/include").join(format!("{triple_arch}-linux-gnu"));
    dir.join("asm").is_dir().then_some(dir)
}

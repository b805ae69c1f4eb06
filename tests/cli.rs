//! The `cipgw` command line as a user meets it, on the real binary: no
//! namespaces, no root.
//!
//! Cases:
//! - `cipgw --version` names the version and the git commit;
//! - `cipgw run --help` shows every section and the defaults the issue
//!   found missing (`--cores`, `--service-cidr`, `--xdp-mode` with its
//!   values);
//! - a settings file with an unknown key, or a bad value, exits 64 naming
//!   the file and the key or flag;
//! - under `--log-format json` every line on standard error is a JSON
//!   object, the fatal one included.

#[path = "support/mod.rs"]
mod support;

use support::run_cipgw;

#[test]
fn version_names_the_git_commit() {
    let out = run_cipgw(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let expected = format!(
        "cipgw {} (git {})\n",
        cipgw::build_info::VERSION,
        cipgw::build_info::GIT_HASH
    );
    assert_eq!(out.stdout, expected);
    assert_ne!(
        cipgw::build_info::GIT_HASH,
        "unknown",
        "built from a git checkout"
    );
}

#[test]
fn run_help_shows_sections_and_defaults() {
    let out = run_cipgw(&["run", "--help"]);
    assert!(out.status.success(), "{out:?}");
    for needle in [
        "Gateway:",
        "Control:",
        "Conntrack:",
        "I/O tuning:",
        "Admin:",
        "Logging:",
        "[default: 0]",
        "[default: 10.96.0.0/12]",
        "[default: auto] [possible values: auto, native, skb]",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle:?} not in:\n{}",
            out.stdout
        );
    }
}

#[test]
fn bad_settings_files_exit_64_naming_the_key() {
    let dir = support::TempDir::new();
    let unknown = dir.write("unknown.toml", "protocl = \"UDP\"\n");
    let out = run_cipgw(&["run", "--config", unknown.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.contains("unknown.toml") && out.stderr.contains("\"protocl\""),
        "{out:?}"
    );
    let bad = dir.write("bad.toml", "[conntrack]\nmax = \"lots\"\n");
    let out = run_cipgw(&["run", "--config", bad.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.contains("bad.toml") && out.stderr.contains("--conntrack-max"),
        "{out:?}"
    );
}

#[test]
fn json_logs_cover_the_fatal_line() {
    let file = support::testdata().join("invalid-bad-ip.yaml");
    let out = run_cipgw(&[
        "--log-format",
        "json",
        "check",
        "--control-file",
        file.to_str().expect("UTF-8"),
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(!lines.is_empty(), "the failure is logged: {out:?}");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert_eq!(value["level"], "ERROR", "{line}");
        assert!(
            value["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
    }
}

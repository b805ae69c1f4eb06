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
//!   object, the fatal one included;
//! - `cipgw check` warns about unknown fields (object and field) and
//!   named targetPorts no endpoint resolves, refuses a nameless object,
//!   and reports every bad document, not only the first;
//! - `cipgw completions bash` and `cipgw man` are generated from the same
//!   definitions as `--help` (they name the flags, defaults included);
//! - `--cores` naming a CPU the process may not run on (taskset) exits 64
//!   saying why;
//! - every testdata/ file passes (or, `invalid-*`, fails with 64) `cipgw
//!   check` run exactly as the README shows it.

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

/// The service CIDR the README's `cipgw check` line gives for testdata/.
const TESTDATA_CIDR: &str = "198.18.100.0/24";

#[test]
fn check_warns_about_unknown_fields_and_unresolved_named_ports() {
    let dir = support::TempDir::new();
    let file = dir.write(
        "warn.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\nspec:\n  clusterIP: 198.18.100.53\n  \
         selector:\n    app: dns\n  ports:\n  - port: 53\n    protocl: UDP\n    targetPort: dns\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: dns-1\n  labels:\n    app: dns\n\
         spec:\n  containers:\n  - name: c\n    ports:\n    - name: domain\n      containerPort: 53\n\
         status:\n  podIP: 198.18.2.1\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
    );
    let out = support::check(&file, TESTDATA_CIDR);
    assert!(out.status.success(), "warnings are no failure: {out:?}");
    assert!(
        out.stderr.contains("warning: ")
            && out
                .stderr
                .contains("(Service default/dns): unknown field \"spec.ports[0].protocl\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "Service default/dns port 53/tcp: no endpoint resolves the named targetPort \"dns\""
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn check_reports_every_bad_document_and_nameless_objects() {
    let dir = support::TempDir::new();
    let file = dir.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: x\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\nspec:\n  ports:\n  - port: 80\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: fine\n",
    );
    let out = support::check(&file, TESTDATA_CIDR);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr
            .contains("document 1 (Service default/a), line 7 column 11: spec.ports[0].port"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("document 2 (Service): metadata.name: is required"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("2 errors in all"), "{}", out.stderr);
}

#[test]
fn testdata_files_check_as_the_readme_shows() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let shown =
        format!("cipgw check --control-file testdata/demo.yaml --service-cidr {TESTDATA_CIDR}");
    assert!(readme.contains(&shown), "the README shows `{shown}`");
    let mut files: Vec<_> = std::fs::read_dir(support::testdata())
        .expect("testdata/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // A dual-stack cluster's file needs the IPv6 service CIDR too
        // (its RequireDualStack Service), as the README shows it.
        let cidrs = if name.starts_with("dual-stack") {
            format!("{TESTDATA_CIDR},2001:2:0:ff::/112")
        } else {
            TESTDATA_CIDR.to_owned()
        };
        let out = support::check(&file, &cidrs);
        if name.starts_with("invalid-") {
            assert_eq!(out.status.code(), Some(64), "{name}: {out:?}");
        } else {
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{name}: {out:?}"
            );
        }
    }
}

#[test]
fn completions_and_man_page_come_from_the_flags() {
    let out = run_cipgw(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    for flag in [
        "--metrics-address",
        "--conntrack-tcp-timeout-established",
        "--control-file",
    ] {
        assert!(out.stdout.contains(flag), "{flag} not completed");
    }
    let out = run_cipgw(&["man"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.starts_with(".ie") || out.stdout.contains(".TH cipgw"),
        "{}",
        &out.stdout[..200]
    );
    for needle in [".TH cipgw-run", "metrics\\-address", "10.96.0.0/12"] {
        assert!(
            out.stdout.contains(needle),
            "{needle:?} not in the man page"
        );
    }
}

#[test]
fn cores_outside_the_affinity_mask_are_an_error() {
    let out = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(support::exe())
        .args([
            "run",
            "--iface",
            "lo",
            "--control-file",
            "none.yaml",
            "--cores",
            "1",
        ])
        .output()
        .expect("taskset (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--cores: core 1 is not among the CPUs this process may run on (0)"),
        "{stderr}"
    );
}

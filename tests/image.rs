//! The OCI image `make image` builds, run under podman as deploy/ runs it.
//!
//! Root (podman keeps its images in root's storage; skipped with a reason
//! otherwise, never when `CI=true`), one lab at a time (`lab::serial`),
//! clean-up also while a panic unwinds, addresses from 198.18.0.0/15 only.
//!
//! The image is built by `make image` once per run of this suite: the
//! static release binary (its first build compiles every dependency for
//! the static target, about 9 minutes on 2 cores; after that cargo finds
//! it up to date) packed by scripts/image.sh, which keeps an image built
//! from the same binary (about a second) and re-packs a changed one
//! (about 4 s).
//!
//! Cases:
//! - the image is one layer from scratch holding a static binary: it runs
//!   with no network (`--version`, the commit it names is also a tag) and
//!   checks testdata/demo.yaml mounted read-only into a read-only root;
//!   deploy/30-daemonset.yaml runs exactly this image, tagged with the
//!   package version;
//! - the image forwards: `cipgw run` from it, started as the DaemonSet
//!   starts it (host network, here the lab gateway's namespace; every
//!   capability dropped but those deploy/ grants; read-only root;
//!   seccomp unconfined), attaches XDP, carries TCP connections through
//!   the VIP to both Pods, answers `cipgw status`, and stops cleanly on
//!   SIGTERM (exit 0, XDP left attached for the next gateway).
//!
//! podman runs the containers with runc and explicit `nofile`/`nproc`
//! limits (see [`podman_run`]): what this machine's cgroups and limits
//! need, not what the image needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use cipgw::lab::{self, Topology};

#[path = "support/mod.rs"]
mod support;

use support::{Lab, HTTP, TARGET_PORT};

/// What `make image` names the image (the Makefile's `IMAGE_NAME`).
const IMAGE_NAME: &str = "localhost/cipgw";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `localhost/cipgw:<package version>`.
fn image() -> String {
    format!("{IMAGE_NAME}:{}", env!("CARGO_PKG_VERSION"))
}

/// Runs `make image` once per test process; returns the image's name.
fn built_image() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("make")
            .arg("-C")
            .arg(repo())
            .arg("image")
            .arg(format!("IMAGE_NAME={IMAGE_NAME}"))
            .output()
            .unwrap_or_else(|e| panic!("running `make image`: {e}"));
        assert!(
            out.status.success(),
            "`make image` failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "make image: {:.1?}\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
        image()
    })
}

/// The `podman run` options every container here gets. runc, not crun:
/// crun 1.8 refuses this machine's hybrid cgroup layout (v1 controllers
/// beside a v2 hierarchy), runc takes it. Explicit `nofile` and `nproc`
/// limits: podman's defaults lie above the hard limits here, and without
/// CAP_SYS_RESOURCE the runtime cannot raise them.
fn podman_run() -> Command {
    let mut podman = Command::new("podman");
    podman.args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ]);
    podman
}

fn output_of(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

#[track_caller]
fn stdout_of_success(command: &mut Command) -> String {
    let out = output_of(command);
    assert!(
        out.status.success(),
        "{command:?} exited with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the one `KEY:` line in deploy/30-daemonset.yaml (its
/// container's `image:` and capabilities' `add:`).
fn daemonset_value(key: &str) -> String {
    let path = repo().join("deploy/30-daemonset.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .collect();
    let [value] = values.as_slice() else {
        panic!(
            "expected one {key}: in {}, found {values:?}",
            path.display()
        );
    };
    (*value).to_owned()
}

/// The capabilities the DaemonSet adds after dropping all, as podman's
/// `--cap-add` takes them: `NET_ADMIN,NET_RAW,...`.
fn deployed_capabilities() -> String {
    let list = daemonset_value("add");
    let caps: Vec<&str> = list
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .collect();
    assert!(caps.contains(&"BPF"), "capabilities.add: {list}");
    caps.join(",")
}

#[test]
fn image_is_a_static_binary_from_scratch_named_as_deploy_runs_it() {
    if !lab::require_root() {
        return;
    }
    let image = built_image();
    assert_eq!(
        daemonset_value("image"),
        image,
        "deploy/30-daemonset.yaml must run the image `make image` builds, tagged with the version in Cargo.toml"
    );

    let inspect = |format: &str| {
        stdout_of_success(
            Command::new("podman").args(["image", "inspect", "--format", format, image]),
        )
        .trim()
        .to_owned()
    };
    assert_eq!(
        inspect("{{ len .RootFS.Layers }}"),
        "1",
        "from scratch: the binary's layer only"
    );
    assert_eq!(
        inspect("{{ .Config.Entrypoint }}"),
        "[/usr/local/bin/cipgw]"
    );
    assert_eq!(
        inspect("{{ index .Labels \"org.opencontainers.image.version\" }}"),
        env!("CARGO_PKG_VERSION")
    );

    // An empty image runs it: nothing to load, no network.
    let version = stdout_of_success(podman_run().args(["--network", "none", image, "--version"]));
    let expected = format!("cipgw {} (git ", env!("CARGO_PKG_VERSION"));
    let commit = version
        .trim()
        .strip_prefix(&expected)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--version printed {version:?}"));
    assert_eq!(
        inspect("{{ index .Labels \"org.opencontainers.image.revision\" }}"),
        commit
    );
    let commit_tag = format!("{IMAGE_NAME}:{}-{commit}", env!("CARGO_PKG_VERSION"));
    assert!(
        output_of(Command::new("podman").args(["image", "exists", &commit_tag]))
            .status
            .success(),
        "the image is also tagged {commit_tag}"
    );

    // A control file mounted in, checked in a read-only root.
    let testdata = support::testdata()
        .canonicalize()
        .expect("testdata/ exists");
    let listing = stdout_of_success(podman_run().args([
        "--network",
        "none",
        "--read-only",
        "--volume",
        &format!("{}:/testdata:ro", testdata.display()),
        image,
        "check",
        "--control-file",
        "/testdata/demo.yaml",
        "--service-cidr",
        "198.18.100.0/24",
    ]));
    assert!(
        listing.contains(
            "198.18.100.10:8080/tcp  default/echo-server (ClusterIP)  -> \
             198.18.2.11:5678, 198.18.2.12:5678, 198.18.2.13:5678"
        ),
        "check in the image printed {listing:?}"
    );
}

/// Removes the container of that name when dropped, also while a panic
/// unwinds (killing the `podman run` client leaves its container
/// running).
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

#[test]
fn image_forwards_in_a_lab_as_the_daemonset_runs_it() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let image = built_image();
    let mut lab = Lab::build(Topology::two_arm("image").pods(2));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(80);
    let docs = lab.selector_service("web", vip, &[HTTP], &[0, 1]);
    lab.control_file(&docs);

    // The lab starts `WRAPPER run ARGS...` in the gateway's namespace;
    // the wrapper runs podman there, but in this process's mount
    // namespace (`ip netns exec` gives its child a private /sys, without
    // the cgroup mounts the runtime needs). The container shares the
    // namespace's network, as `hostNetwork: true` shares the node's. The
    // control file and state directory live in the lab's directory,
    // mounted at the same path.
    let container = Container {
        name: format!("cipgw-image-test-{}", std::process::id()),
    };
    let dir = lab
        .state_dir()
        .parent()
        .expect("the state directory is in the lab's directory")
        .to_owned();
    let wrapper = lab.script(
        "podman-cipgw",
        &format!(
            "exec nsenter --mount=/proc/{pid}/ns/mnt -- \
             podman --runtime runc run --rm --name {name} \
             --network host --read-only \
             --cap-drop ALL --cap-add {caps} --security-opt seccomp=unconfined \
             --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
             --env RUST_LOG --volume {dir}:{dir} {image} \"$@\"",
            pid = std::process::id(),
            name = container.name,
            caps = deployed_capabilities(),
            dir = dir.display(),
        ),
    );
    let started = Instant::now();
    lab.start_gateway_through(&wrapper, &[]);
    eprintln!(
        "the gateway in the image was ready {:.1?} after podman run",
        started.elapsed()
    );
    assert_eq!(
        lab.xdp_ifaces().len(),
        lab.info().gateway.ifaces().len(),
        "XDP attached from inside the container on every gateway interface"
    );

    let target = support::vip_port(vip, &HTTP);
    let served = lab.tcp_sessions(target, 20, 2);
    assert_eq!(served.values().sum::<usize>(), 20, "{served:?}");
    assert_eq!(served.len(), 2, "both Pods answer: {served:?}");

    // The admin endpoint of the gateway in the container, from the host
    // binary in the same network namespace.
    let status = lab
        .topology()
        .gateway()
        .command(support::exe())
        .args(["status", "--json"])
        .output()
        .expect("cipgw status");
    let status: cipgw::admin::StatusView =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| {
            lab.fail(format_args!(
                "cipgw status --json: {e}: {}",
                String::from_utf8_lossy(&status.stdout)
            ))
        });
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert!(status.ready, "{status:?}");

    let log = lab.stop_gateway();
    if let Some(line) = log.iter().find(|l| l.contains("ERROR")) {
        panic!("the gateway in the image logged an error: {line}");
    }
    drop(container);
}

//! Operability of a running `cipgw run` in network namespaces: what its
//! log says over its life, and how it stops.
//!
//! Runs under the same rules as the other namespace suites: one test at a
//! time (`lab::serial`), root (skipped with a reason otherwise, never when
//! `CI=true`), RAII clean-up also while a panic unwinds, addresses from
//! 198.18.0.0/15 only.
//!
//! Cases:
//! - 20 starts and graceful stops (SIGTERM) in a row: every run logs its
//!   version line first, exits 0 and logs no ERROR (a worker that ended
//!   on the stop signal is not a crash); the first run also changes its
//!   control file and logs one summary line saying what the table added.

use std::time::Duration;

use cipgw::lab::{self, Topology};

#[path = "support/mod.rs"]
mod support;

use support::{Lab, HTTP, TABLE_APPLIED};

/// Graceful stops in a row that must all be clean (issue 16).
const STOPS: usize = 20;

#[test]
fn graceful_stops_log_version_summary_and_no_error() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("opsstop").pods(2));
    let vip = lab.info().vip(80);
    let docs = lab.selector_service("web", vip, &[HTTP], &[0]);
    lab.control_file(&docs);
    for run in 1..=STOPS {
        lab.start_gateway();
        if run == 1 {
            // One more Pod behind the Service: one summary line with one
            // endpoint added and the Service changed.
            let before = lab.log_count(TABLE_APPLIED);
            let docs = lab.selector_service("web", vip, &[HTTP], &[0, 1]);
            lab.control_file(&docs);
            lab.wait_log(TABLE_APPLIED, before, Duration::from_secs(10));
            let log = lab.gateway_log();
            let applied: Vec<&String> = log.iter().filter(|l| l.contains(TABLE_APPLIED)).collect();
            let [line] = applied.as_slice() else {
                lab.fail(format_args!(
                    "expected one {TABLE_APPLIED:?} line, got {applied:?}"
                ));
            };
            for field in [
                "services_added=0",
                "services_changed=1",
                "services_removed=0",
                "endpoints_added=1",
                "endpoints_removed=0",
                "retired_flows=0",
            ] {
                assert!(line.contains(field), "{field} missing from {line:?}");
            }
        }
        let log = lab.stop_gateway();
        let first = log.first().map(String::as_str).unwrap_or_default();
        assert!(
            first.contains("cipgw starting")
                && first.contains(&format!("version={}", cipgw::build_info::VERSION))
                && first.contains(&format!("git={}", cipgw::build_info::GIT_HASH)),
            "run {run}: the first line is not the version line: {first:?}"
        );
        let errors: Vec<&String> = log.iter().filter(|l| l.contains("ERROR")).collect();
        assert!(
            errors.is_empty(),
            "run {run} of {STOPS}: a graceful stop logged errors: {errors:#?}"
        );
    }
}

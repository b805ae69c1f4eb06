//! Replays one fuzz input and prints each frame's verdict and outgoing
//! bytes as it is processed, for triage of a crash:
//!
//! `cargo run --manifest-path forwarder/fuzz/Cargo.toml --example replay -- FILE`
//!
//! A broken invariant panics with its message after the frames before it
//! were printed, and the exit status is 1.

use std::io::Write;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: replay FILE");
        std::process::exit(64);
    };
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut frame = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cipgw_fuzz::run_with(&data, |o| {
            // A closed stdout (a pager quit) is no broken invariant.
            let _ = writeln!(
                std::io::stdout(),
                "frame {frame}: {:?}\n  {:02x?}",
                o.verdict,
                o.frame
            );
            frame += 1;
        })
    }));
    if result.is_err() {
        eprintln!("{path}: an invariant broke at frame {frame} (message above)");
        std::process::exit(1);
    }
}

//! Fuzz target: the whole packet path (parse, classify, conntrack,
//! rewrite, answers) over a session of frames; see `cipgw_fuzz` for the
//! input format and the invariants checked.
//!
//! Run: `forwarder/fuzz/run.sh [SECONDS]`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cipgw_fuzz::run(data));

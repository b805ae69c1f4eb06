//! What this binary is: its version and the commit it was built from
//! (`git rev-parse`, set by build.rs; `unknown` outside a git checkout),
//! for `--version`, the start line of the log and the
//! `cipgw_build_info` metric.

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from (abbreviated hash).
pub const GIT_HASH: &str = env!("CIPGW_GIT_HASH");

/// `0.1.0 (git 1a2b3c4d5e6f)`: what `cipgw --version` prints after the name.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CIPGW_GIT_HASH"),
    ")"
);

//! cipgw's data plane: how packets move.
//!
//! A frame arrives on an AF_XDP socket ([`xsk`]) that the XDP program
//! ([`bpf`]) redirected to because it is for a VIP or from a backend; a
//! per-core worker ([`worker`]) runs it through the [`pipeline`]: parse
//! ([`wire`]), conntrack lookup ([`conntrack`]), on a miss a service lookup
//! in the published [`table`] and a backend choice ([`lb`]), the rewrite with
//! incremental checksums ([`checksum`]) and L2 addressing from the kernel's
//! routes and neighbours ([`route`], [`netlink`]). The data plane depends
//! on no Kubernetes client and no async runtime: only the `daemon` feature
//! (on by default; the running gateway and the `cipgw` binary) brings in
//! the control plane, and the fuzzer builds the library without it.

// The packet path itself is the `cipgw-datapath` crate; its modules are
// re-exported here under their old paths.
pub use cipgw_datapath::{
    affinity, checksum, conntrack, counters, dns, family, lb, maglev, pipeline, reject, route,
    table, wire,
};

pub mod admin;
pub mod bpf;
pub mod build_info;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod lab;
pub mod metrics;
pub mod netlink;
pub mod worker;
pub mod xsk;

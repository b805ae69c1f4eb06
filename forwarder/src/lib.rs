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

pub mod admin;
pub mod affinity;
pub mod bpf;
pub mod checksum;
pub mod conntrack;
pub mod counters;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod lab;
pub mod lb;
pub mod metrics;
pub mod netlink;
pub mod pipeline;
pub mod reject;
pub mod route;
pub mod table;
pub mod wire;
pub mod worker;
pub mod xsk;

//! cipgw's packet path, as a library that does no I/O of its own.
//!
//! A frame handed to [`pipeline::Pipeline`] is parsed ([`wire`]), looked up
//! in the connection table ([`conntrack`]), on a miss matched against the
//! published service table ([`table`]) and given a backend ([`lb`],
//! [`affinity`]), rewritten with incremental checksums ([`checksum`]) or
//! answered ([`reject`]), and addressed to its next hop from a snapshot of
//! the kernel's routes and neighbours ([`route`]); every outcome is counted
//! ([`counters`]).
//!
//! Why a crate of its own: everything here is deterministic over bytes in
//! memory, so the fuzzer, the criterion benches and the pipeline tests
//! build it alone, without the AF_XDP sockets, the XDP program (clang,
//! libbpf), the metrics encoder, the admin server or the Kubernetes
//! manifest parser that the `cipgw` crate adds around it; and all three
//! drive it through one in-memory gateway, `harness` (for the benches and
//! the fuzzer behind the `harness` feature).

pub mod affinity;
pub mod checksum;
pub mod conntrack;
pub mod counters;
pub mod dns;
pub mod family;
pub mod fragments;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod huge_slice;
pub use huge_slice::{page_backing, PageBacking};
pub mod lb;
pub mod maglev;
pub mod pipeline;
pub mod reject;
pub mod route;
pub mod table;
pub mod wire;

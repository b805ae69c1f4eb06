//! What the gateway should do, as plain data.
//!
//! This crate holds the typed service model the data plane compiles its
//! lookup table from ([`model`]), the connection table's defaults that
//! settings and data path share ([`conntrack`]), the daemon settings with
//! their defaults ([`settings`]) and the parser for control files of
//! Kubernetes manifests ([`control_file`]). It is pure: no sockets, no
//! threads, no clocks, so every rule in it can be tested on static input.
//! Without its default feature `files` it is the model and [`conntrack`]
//! alone, for the data path (cipgw-datapath), which must not build the
//! manifest parser.

#![forbid(unsafe_code)]

pub mod conntrack;
#[cfg(feature = "files")]
pub mod control_file;
#[cfg(feature = "files")]
pub mod listing;
pub mod model;
#[cfg(feature = "files")]
pub mod settings;

#[cfg(feature = "files")]
pub use control_file::{
    parse_control_file, parse_control_file_reporting, ControlFileError, ControlObjects, Located,
    Location, ObjectRef, Skipped,
};
#[cfg(feature = "files")]
pub use listing::{render_skipped, render_table};
pub use model::{
    ClusterIp, Endpoint, EndpointState, IpFamily, IpFamilyPolicy, LbAlgorithm, Protocol, Service,
    ServiceKind, ServiceName, ServicePort, ServiceTable, TargetPort, Vips,
};
#[cfg(feature = "files")]
pub use settings::Settings;

//! What the gateway should do, as plain data.
//!
//! This crate holds the typed service model the data plane compiles its
//! lookup table from ([`model`]), the daemon settings with their defaults
//! ([`settings`]) and the parser for control files of Kubernetes manifests
//! ([`control_file`]). It is pure: no sockets, no threads, no clocks, so
//! every rule in it can be tested on static input.

pub mod control_file;
pub mod listing;
pub mod model;
pub mod settings;

pub use control_file::{
    parse_control_file, ControlFileError, ControlObjects, Located, Location, ObjectRef, Skipped,
};
pub use listing::{render_skipped, render_table};
pub use model::{
    ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
    ServiceTable, TargetPort,
};
pub use settings::Settings;

//! Control plane: sources of desired state and their translation to the model.
//!
//! - [`mod@translate`]: the one translation from Kubernetes objects (Service,
//!   EndpointSlice, Pod) to [`cipgw_config::ServiceTable`], shared by every
//!   source.
//! - [`allocate`]: stable ClusterIPs for Services that name none.
//! - [`file_source`]: control files of Kubernetes manifests, loaded once.
//! - [`source`]: what a running source tells the daemon ([`SourceEvent`])
//!   and the handle that stops it; [`coalesce`]: at most one table per
//!   `min_sync_period`.
//! - [`file_watch`]: the control file, watched and reloaded on change.
//! - [`kube_source`]: Services and EndpointSlices watched through the
//!   Kubernetes API.

#![forbid(unsafe_code)]

pub mod allocate;
pub mod coalesce;
pub mod file_source;
pub mod file_watch;
pub mod kube_source;
pub mod source;
pub mod translate;

#[cfg(test)]
mod deploy_manifests;

pub use file_source::{load_control_file, load_control_text, ControlError, TextError};
pub use file_watch::spawn_file_source;
pub use kube_source::{spawn_kube_source, KubeSourceConfig};
pub use source::{channel, SourceError, SourceEvent, SourceHandle, DEFAULT_MIN_SYNC_PERIOD};
pub use translate::{translate, translate_lenient, Object, Objects, Problem, TranslateError};

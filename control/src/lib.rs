//! Control plane: sources of desired state and their translation to the model.
//!
//! - [`mod@translate`]: the one translation from Kubernetes objects (Service,
//!   EndpointSlice, Pod) to [`cipgw_config::ServiceTable`], shared by every
//!   source.
//! - [`allocate`]: stable ClusterIPs for Services that name none.
//! - [`file_source`]: control files of Kubernetes manifests.

pub mod allocate;
pub mod file_source;
pub mod translate;

pub use file_source::{load_control_file, load_control_text, ControlError, TextError};
pub use translate::{translate, translate_lenient, Object, Objects, Problem, TranslateError};

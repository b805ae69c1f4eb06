//! The Kubernetes source against a fake API server (in progress).

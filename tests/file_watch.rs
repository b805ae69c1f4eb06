//! The control-file source on a real filesystem (in progress).

//! Parsing of control files: multi-document YAML of Kubernetes objects.

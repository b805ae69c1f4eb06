//! Parsing of control files: multi-document YAML of Kubernetes objects.
//!
//! A control file holds `v1 Service`, `discovery.k8s.io/v1 EndpointSlice`
//! and `v1 Pod` documents, and `v1 List` documents whose `items` hold any of
//! them — what `kubectl get svc,endpointslices,pods -A -o yaml` prints. The
//! typed lists the API server returns (`ServiceList`, `EndpointSliceList`,
//! `PodList`, whose items may omit `apiVersion` and `kind`) are accepted as
//! well. Documents that are empty (`---` alone, or only comments) are
//! skipped.
//!
//! Objects of other kinds (Deployment, ConfigMap, Namespace, ...) are
//! skipped too, so that a file can hold what `kubectl get all -A -o yaml`
//! prints or the manifests an application is deployed from; each is
//! recorded in [`ControlObjects::skipped`] for `cipgw check` to list. A kind
//! is named by its API group and kind, as Kubernetes names resources: a
//! `serving.knative.dev/v1 Service` is not a Service and is skipped, while a
//! `v2 Service` is a Service in a version cipgw cannot read, an error.
//! Anything that is not an object (no mapping, no `apiVersion` or `kind`),
//! and any object of a kind cipgw reads that does not type, is an error.
//!
//! This module only turns text into typed k8s-openapi objects, each tagged
//! with where it came from ([`Location`]), so that every later error can
//! name the document. What the objects mean (ClusterIPs, ports, endpoints)
//! is decided by the one translation in the `control` crate, which the
//! Kubernetes-API source shares.
//!
//! Invariants of a parsed [`ControlObjects`]:
//! - every object has `metadata.namespace` set (a missing one becomes
//!   `default`, as `kubectl apply` would make it);
//! - objects keep file order within each kind, and skipped objects keep
//!   file order among themselves.
//!
//! How errors find their place: documents are first read into
//! `serde_yaml::Value`s (to learn `apiVersion` and `kind` before choosing a
//! type) and then typed. Only when typing fails is the document read again,
//! straight from the text into the same type, so that serde_yaml reports
//! the line and the field path (`spec.ports[0].port`) of the fault.

// Errors here end a parse and are built at most once per file: their size
// costs nothing, and boxing their fields would only make matching clumsier.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::model::ServiceName;

/// The namespace of an object whose `metadata.namespace` is missing.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where in a control file an object was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// 1-based document number, counting empty documents too, so that it
    /// matches what a reader counts from the `---` separators.
    pub document: usize,
    /// 0-based index into the `items` of a List document.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// An object together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub location: Location,
    pub object: T,
}

/// Every supported object of a control file, in file order per kind, and
/// the objects of other kinds that were skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlObjects {
    pub services: Vec<Located<Service>>,
    pub endpoint_slices: Vec<Located<EndpointSlice>>,
    pub pods: Vec<Located<Pod>>,
    /// Objects of kinds cipgw does not read, in file order.
    pub skipped: Vec<Located<Skipped>>,
    /// Fields cipgw's types do not know (a misspelt `protocl: UDP`),
    /// each naming its object and field as kubectl's strict validation
    /// does; ignored, but worth a warning.
    pub warnings: Vec<String>,
}

/// An object of a kind cipgw does not read. Displays as
/// `Deployment default/echo-server`, `Namespace cipgw` for a kind known to
/// be cluster-scoped, or just the kind for an object without a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub api_version: String,
    pub kind: String,
    /// `metadata.namespace` (`default` when missing); `None` for a kind
    /// known to be cluster-scoped.
    pub namespace: Option<String>,
    /// `metadata.name`, when written.
    pub name: Option<String>,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => write!(f, " {namespace}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            (_, None) => Ok(()),
        }
    }
}

/// Names a Kubernetes object in a message: where it was written (if it
/// came from a file), its kind and `namespace/name` as far as they are
/// known. Displays as `document 3 (Service default/echo)`, or
/// `Service default/echo` for an object that came from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub location: Option<Location>,
    pub kind: Option<String>,
    pub name: Option<ServiceName>,
}

impl ObjectRef {
    /// An object of a known kind and name.
    pub fn new(location: Option<Location>, kind: &str, name: ServiceName) -> Self {
        Self {
            location,
            kind: Some(kind.to_owned()),
            name: Some(name),
        }
    }

    /// The `namespace/name` of an object's metadata, with the namespace
    /// defaulted and a missing name shown as empty.
    pub fn name_of(metadata: &ObjectMeta) -> ServiceName {
        ServiceName::new(
            metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => Some(format!("{kind} {name}")),
            (Some(kind), None) => Some(kind.clone()),
            (None, Some(name)) => Some(name.to_string()),
            (None, None) => None,
        };
        match (self.location, what) {
            (Some(location), Some(what)) => write!(f, "{location} ({what})"),
            (Some(location), None) => write!(f, "{location}"),
            (None, Some(what)) => f.write_str(&what),
            (None, None) => f.write_str("object"),
        }
    }
}

/// A control file that cannot be read as Kubernetes objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlFileError {
    /// The text is not YAML.
    #[error("document {document}{}: invalid YAML: {message}", at_line(*line, *column))]
    Yaml {
        document: usize,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A document (or List item) that is not a Kubernetes object at all.
    #[error("{object}: expected a Kubernetes object (a mapping with apiVersion and kind), found {found}")]
    NotAnObject { object: ObjectRef, found: String },
    /// An object without `apiVersion` or `kind`.
    #[error("{object}: {field} is missing: {SUPPORTED}")]
    MissingTypeField {
        object: ObjectRef,
        field: &'static str,
    },
    /// An object of a kind cipgw reads, in an API version it does not
    /// (`discovery.k8s.io/v1beta1 EndpointSlice`).
    #[error("{object}: apiVersion: {api_version:?} is not supported, expected {expected:?}: {SUPPORTED}")]
    UnsupportedVersion {
        object: ObjectRef,
        api_version: String,
        expected: &'static str,
    },
    /// A List (or typed list) as an item of a List.
    #[error("{object}: a List item cannot be a list itself")]
    NestedList { object: ObjectRef },
    /// A List document whose `items` is not a sequence.
    #[error("{object}: items: expected a sequence of objects")]
    BadItems { object: ObjectRef },
    /// A field with a value its type does not allow (wrong type, unknown
    /// enum value, missing required field).
    #[error("{object}{}: {}{message}", at_line(*line, *column), field_prefix(field.as_deref()))]
    Field {
        object: ObjectRef,
        /// Path within the object, e.g. `spec.ports[0].port`, when known.
        field: Option<String>,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
}

const SUPPORTED: &str = "a control file holds v1 Service, discovery.k8s.io/v1 EndpointSlice, \
     v1 Pod and v1 List documents (objects of other kinds are skipped)";

fn at_line(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(", line {line} column {column}"),
        (Some(line), None) => format!(", line {line}"),
        _ => String::new(),
    }
}

fn field_prefix(field: Option<&str>) -> String {
    field.map(|f| format!("{f}: ")).unwrap_or_default()
}

/// Parses a control file into typed objects.
///
/// Fails with the first error; see [`ControlFileError`] for what each
/// names, and [`parse_control_file_reporting`] for all of them.
pub fn parse_control_file(text: &str) -> Result<ControlObjects, ControlFileError> {
    let (objects, mut errors) = parse_control_file_reporting(text);
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// Parses a control file, going on after a bad document to report every
/// one (`cipgw check`): the objects that parsed, and the errors in file
/// order. A document whose YAML is broken ends the file (the YAML reader
/// cannot find the next document after it).
pub fn parse_control_file_reporting(text: &str) -> (ControlObjects, Vec<ControlFileError>) {
    let mut objects = ControlObjects::default();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                errors.push(yaml_error(number, &e));
                break;
            }
        };
        if let Err(e) = parse_document(text, number, value, &mut objects) {
            errors.push(e);
        }
    }
    (objects, errors)
}

fn parse_document(
    text: &str,
    number: usize,
    value: Value,
    objects: &mut ControlObjects,
) -> Result<(), ControlFileError> {
    let value = strip_tags(value);
    if value.is_null() {
        return Ok(());
    }
    let location = Location {
        document: number,
        item: None,
    };
    let object = Object::peek(value, location)?;
    match object.reading()? {
        Reading::List(typed) => parse_list(text, object, typed, objects)?,
        Reading::Object(kind) => object.parse_into(kind, text, Source::Document, objects)?,
        Reading::Skip => objects.skipped.push(object.skipped()),
    }
    Ok(())
}

/// A field path as kubectl writes it: `spec.ports[0].protocl`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// An object without `metadata.name`: Kubernetes refuses it, and nothing
/// could name it in a table or a message.
fn require_name(
    metadata: &ObjectMeta,
    object: ObjectRef,
    location: Location,
) -> Result<(), ControlFileError> {
    if metadata.name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Ok(());
    }
    Err(ControlFileError::Field {
        object: ObjectRef {
            location: Some(location),
            name: None,
            ..object
        },
        field: Some("metadata.name".into()),
        line: None,
        column: None,
        message: "is required: every object needs a name".into(),
    })
}

/// `(apiVersion, kind)` of the supported kinds.
type TypeMeta = (&'static str, &'static str);
const SERVICE: TypeMeta = ("v1", "Service");
const POD: TypeMeta = ("v1", "Pod");
const ENDPOINT_SLICE: TypeMeta = ("discovery.k8s.io/v1", "EndpointSlice");

/// The kinds of object cipgw keeps.
#[derive(Clone, Copy)]
enum Kind {
    Service,
    EndpointSlice,
    Pod,
}

/// What the parser does with an object of some kind.
#[derive(Clone, Copy)]
enum Reading {
    /// A Service, EndpointSlice or Pod: typed and kept.
    Object(Kind),
    /// A List; `Some` is the item kind of a typed list.
    List(Option<TypeMeta>),
    /// A kind cipgw does not read: recorded in [`ControlObjects::skipped`].
    Skip,
}

/// The kinds cipgw reads, each in the one API version it reads.
const READ: [(TypeMeta, Reading); 7] = [
    (SERVICE, Reading::Object(Kind::Service)),
    (ENDPOINT_SLICE, Reading::Object(Kind::EndpointSlice)),
    (POD, Reading::Object(Kind::Pod)),
    (("v1", "List"), Reading::List(None)),
    (("v1", "ServiceList"), Reading::List(Some(SERVICE))),
    (("v1", "PodList"), Reading::List(Some(POD))),
    (
        ("discovery.k8s.io/v1", "EndpointSliceList"),
        Reading::List(Some(ENDPOINT_SLICE)),
    ),
];

/// Well-known cluster-scoped kinds, as `(API group, kind)`: a skipped
/// object of one of these is named without a namespace. Others are named
/// as namespaced, which is what most objects in a manifest are.
const CLUSTER_SCOPED: [(&str, &str); 12] = [
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("networking.k8s.io", "IngressClass"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
];

/// The API group of an `apiVersion`: `apps` of `apps/v1`, `""` (the core
/// group) of `v1`.
fn api_group(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group)
}

/// How to find an object's text again when typing it fails.
#[derive(Clone, Copy)]
enum Source {
    /// The whole document is the object.
    Document,
    /// The object is `items[i]` of the document, written as is.
    ListItem,
    /// The object is a typed-list item that had `apiVersion`/`kind` filled
    /// in; its text no longer matches what is typed.
    FilledListItem,
}

/// A document or List item read far enough to know what it is.
struct Object {
    value: Value,
    location: Location,
    api_version: String,
    kind: String,
    name: Option<ServiceName>,
}

impl Object {
    fn peek(value: Value, location: Location) -> Result<Self, ControlFileError> {
        let Value::Mapping(map) = &value else {
            return Err(ControlFileError::NotAnObject {
                object: ObjectRef {
                    location: Some(location),
                    kind: None,
                    name: None,
                },
                found: describe(&value).to_owned(),
            });
        };
        let name = peek_name(map);
        let api_version = map.get("apiVersion").and_then(Value::as_str);
        let kind = map.get("kind").and_then(Value::as_str);
        let object = ObjectRef {
            location: Some(location),
            kind: kind.map(str::to_owned),
            name: name.clone(),
        };
        let Some(api_version) = api_version else {
            return Err(ControlFileError::MissingTypeField {
                object,
                field: "apiVersion",
            });
        };
        let Some(kind) = kind else {
            return Err(ControlFileError::MissingTypeField {
                object,
                field: "kind",
            });
        };
        Ok(Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name,
            location,
            value,
        })
    }

    fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            location: Some(self.location),
            kind: Some(self.kind.clone()),
            name: self.name.clone(),
        }
    }

    /// How this object is read. Its kind is found by API group and kind;
    /// a kind cipgw reads must also be in the version it reads.
    fn reading(&self) -> Result<Reading, ControlFileError> {
        let group = api_group(&self.api_version);
        let read = READ
            .iter()
            .find(|((api_version, kind), _)| *kind == self.kind && api_group(api_version) == group);
        match read {
            None => Ok(Reading::Skip),
            Some(((api_version, _), reading)) if *api_version == self.api_version => Ok(*reading),
            Some(((expected, _), _)) => Err(ControlFileError::UnsupportedVersion {
                object: self.object_ref(),
                api_version: self.api_version.clone(),
                expected,
            }),
        }
    }

    /// The record of this object as skipped.
    fn skipped(self) -> Located<Skipped> {
        let cluster_scoped =
            CLUSTER_SCOPED.contains(&(api_group(&self.api_version), self.kind.as_str()));
        let metadata = match &self.value {
            Value::Mapping(map) => map.get("metadata"),
            _ => None,
        };
        let field = |key: &str| {
            metadata
                .and_then(|metadata| metadata.get(key))
                .and_then(Value::as_str)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let namespace = (!cluster_scoped)
            .then(|| field("namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()));
        Located {
            location: self.location,
            object: Skipped {
                name: field("name"),
                namespace,
                api_version: self.api_version,
                kind: self.kind,
            },
        }
    }

    /// Types a Service, EndpointSlice or Pod and adds it to `objects`.
    fn parse_into(
        self,
        kind: Kind,
        text: &str,
        source: Source,
        objects: &mut ControlObjects,
    ) -> Result<(), ControlFileError> {
        let object = self.object_ref();
        let warnings = &mut objects.warnings;
        match kind {
            Kind::Service => {
                let (mut service, location) = self.typed::<Service>(text, source, warnings)?;
                require_name(&service.metadata, object, location)?;
                default_namespace(&mut service.metadata);
                objects.services.push(Located {
                    location,
                    object: service,
                });
            }
            Kind::EndpointSlice => {
                let (mut slice, location) = self.typed::<EndpointSlice>(text, source, warnings)?;
                require_name(&slice.metadata, object, location)?;
                default_namespace(&mut slice.metadata);
                objects.endpoint_slices.push(Located {
                    location,
                    object: slice,
                });
            }
            Kind::Pod => {
                let (mut pod, location) = self.typed::<Pod>(text, source, warnings)?;
                require_name(&pod.metadata, object, location)?;
                default_namespace(&mut pod.metadata);
                objects.pods.push(Located {
                    location,
                    object: pod,
                });
            }
        }
        Ok(())
    }

    fn typed<T: DeserializeOwned>(
        self,
        text: &str,
        source: Source,
        warnings: &mut Vec<String>,
    ) -> Result<(T, Location), ControlFileError> {
        let object = self.object_ref();
        let location = self.location;
        // Typing from the value is the fast path. The value itself is needed
        // again only to explain a failure of a filled-in typed-list item.
        // Fields the type ignores are collected on the way.
        let mut unknown = Vec::new();
        let mut note = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
        let typed = match source {
            Source::FilledListItem => serde_ignored::deserialize(&self.value, &mut note)
                .map_err(|e| (e, Some(self.value))),
            Source::Document | Source::ListItem => {
                serde_ignored::deserialize(self.value, &mut note).map_err(|e| (e, None))
            }
        };
        warnings.extend(
            unknown
                .into_iter()
                .map(|field| format!("{object}: unknown field {field:?}")),
        );
        match typed {
            Ok(typed) => Ok((typed, location)),
            Err((error, keep)) => Err(explain::<T>(text, location, source, keep, object, &error)),
        }
    }
}

/// Reads the `items` of a List document. `typed` is the item kind of a
/// typed list (`ServiceList`), whose items may omit `apiVersion`/`kind`.
fn parse_list(
    text: &str,
    list: Object,
    typed: Option<TypeMeta>,
    objects: &mut ControlObjects,
) -> Result<(), ControlFileError> {
    let object = list.object_ref();
    let Value::Mapping(mut map) = list.value else {
        unreachable!("peeked objects are mappings")
    };
    let items = match map.remove("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Sequence(items)) => items,
        Some(_) => return Err(ControlFileError::BadItems { object }),
    };
    for (index, item) in items.into_iter().enumerate() {
        let location = Location {
            document: list.location.document,
            item: Some(index),
        };
        let mut item = strip_tags(item);
        let mut source = Source::ListItem;
        if let (Some((api_version, kind)), Value::Mapping(map)) = (typed, &mut item) {
            for (key, value) in [("apiVersion", api_version), ("kind", kind)] {
                if !map.contains_key(key) {
                    map.insert(key.into(), value.into());
                    source = Source::FilledListItem;
                }
            }
        }
        let item = Object::peek(item, location)?;
        match item.reading()? {
            Reading::Object(kind) => item.parse_into(kind, text, source, objects)?,
            Reading::Skip => objects.skipped.push(item.skipped()),
            Reading::List(_) => {
                return Err(ControlFileError::NestedList {
                    object: item.object_ref(),
                })
            }
        }
    }
    Ok(())
}

/// Builds the error for an object whose typing failed: types it again in a
/// way that makes serde_yaml report the field path (and, from the file's
/// text, the line), falling back to the bare message.
fn explain<T: DeserializeOwned>(
    text: &str,
    location: Location,
    source: Source,
    value: Option<Value>,
    object: ObjectRef,
    error: &serde_yaml::Error,
) -> ControlFileError {
    let again = match source {
        Source::Document => nth_document(text, location.document)
            .and_then(|document| T::deserialize(document).err()),
        Source::ListItem => nth_document(text, location.document).and_then(|document| {
            ListItem::<T> {
                index: location.item.unwrap_or_default(),
                marker: PhantomData,
            }
            .deserialize(document)
            .err()
        }),
        // Lines in re-serialized text would mislead; only the path is kept.
        Source::FilledListItem => value
            .and_then(|value| serde_yaml::to_string(&value).ok())
            .and_then(|yaml| serde_yaml::from_str::<T>(&yaml).err())
            .map(|e| without_location(&e)),
    };
    let Some(again) = again else {
        // Not reproduced from the text: report what typing the value said.
        return ControlFileError::Field {
            object,
            field: None,
            line: None,
            column: None,
            message: error.to_string(),
        };
    };
    let (field, message) = split_path(&again);
    let position = again.location();
    let mut field = field;
    if let (Some(item), Some(path)) = (location.item, field.as_deref()) {
        // The object is `items[i]`; its fields are named from the object.
        let prefix = format!("items[{item}].");
        if let Some(rest) = path.strip_prefix(&prefix) {
            field = Some(rest.to_owned());
        } else if path == format!("items[{item}]") {
            field = None;
        }
    }
    ControlFileError::Field {
        object,
        field,
        line: position.as_ref().map(serde_yaml::Location::line),
        column: position.as_ref().map(serde_yaml::Location::column),
        message,
    }
}

/// The `number`th (1-based) document of `text`, ready to deserialize.
fn nth_document(text: &str, number: usize) -> Option<serde_yaml::Deserializer<'_>> {
    serde_yaml::Deserializer::from_str(text).nth(number.checked_sub(1)?)
}

/// Marks an error as having no place in the file (its place was in
/// re-serialized text).
fn without_location(error: &serde_yaml::Error) -> serde_yaml::Error {
    let (field, message) = split_path(error);
    let message = match field {
        Some(field) => format!("{field}: {message}"),
        None => message,
    };
    de::Error::custom(message)
}

/// Splits serde_yaml's `path: message at line L column C` into its path
/// and message. serde_yaml keeps the path private and only prints it; a
/// path never holds whitespace (its segments are field names and
/// `[index]`), while every serde message has a space before its first
/// `": "`, which tells the two apart.
fn split_path(error: &serde_yaml::Error) -> (Option<String>, String) {
    let mut text = error.to_string();
    if let Some(location) = error.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if text.ends_with(&suffix) {
            text.truncate(text.len() - suffix.len());
        }
    }
    match text.split_once(": ") {
        Some((path, message)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            (Some(path.to_owned()), message.to_owned())
        }
        _ => (None, text),
    }
}

/// Deserializes item `index` of a List document's `items` as `T`, skipping
/// everything else, so that serde_yaml tracks the path `items[i]...`.
struct ListItem<T> {
    index: usize,
    marker: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ListItem<T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> de::Visitor<'de> for ListItem<T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seed = Some(self);
        while let Some(key) = map.next_key::<String>()? {
            match (key.as_str(), seed.take()) {
                ("items", Some(item)) => map.next_value_seed(Items(item))?,
                (_, kept) => {
                    seed = kept;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct Items<T>(ListItem<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Items<T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Items<T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let more = if index == self.0.index {
                seq.next_element::<T>()?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

fn yaml_error(document: usize, error: &serde_yaml::Error) -> ControlFileError {
    let location = error.location();
    let mut message = error.to_string();
    if let Some(location) = &location {
        // serde_yaml appends the position; the variant shows it up front.
        for suffix in [
            format!(" at line {} column {}", location.line(), location.column()),
            format!(" at position {}", location.index()),
        ] {
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
    }
    ControlFileError::Yaml {
        document,
        line: location.as_ref().map(serde_yaml::Location::line),
        column: location.as_ref().map(serde_yaml::Location::column),
        message,
    }
}

fn peek_name(map: &Mapping) -> Option<ServiceName> {
    let metadata = map.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(ServiceName::new(namespace, name))
}

fn default_namespace(metadata: &mut ObjectMeta) {
    if metadata.namespace.as_deref().unwrap_or_default().is_empty() {
        metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
}

/// Removes YAML tags (`!Foo`) from the top of a value: Kubernetes objects
/// carry none, and k8s-openapi types would reject them.
fn strip_tags(mut value: Value) -> Value {
    while let Value::Tagged(tagged) = value {
        value = tagged.value;
    }
    value
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_control_file(text)
            .expect_err("input is invalid")
            .to_string()
    }

    const SERVICE_DOC: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  clusterIP: 198.18.100.10
  ports:
  - port: 8080
    targetPort: 5678
";

    #[test]
    fn parses_documents_and_skips_empty_ones() {
        let text = format!(
            "# leading comment\n---\n{SERVICE_DOC}---\n# only a comment\n---\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: echo-1\n  namespace: demo\n\
             status:\n  podIP: 198.18.2.11\n"
        );
        let objects = parse_control_file(&text).expect("valid");
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.pods.len(), 1);
        let service = &objects.services[0];
        assert_eq!(
            service.location,
            Location {
                document: 1,
                item: None
            }
        );
        assert_eq!(
            service.object.metadata.namespace.as_deref(),
            Some("default")
        );
        let pod = &objects.pods[0];
        assert_eq!(pod.location.document, 4);
        assert_eq!(pod.object.metadata.namespace.as_deref(), Some("demo"));
    }

    #[test]
    fn empty_file_is_empty() {
        assert_eq!(
            parse_control_file("").expect("valid"),
            ControlObjects::default()
        );
        assert_eq!(
            parse_control_file("# nothing\n").expect("valid"),
            ControlObjects::default()
        );
    }

    #[test]
    fn list_items_remember_their_index() {
        let text = "\
apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: a
    namespace: ns1
  spec:
    ports:
    - port: 80
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: a-xyz
    namespace: ns1
    labels:
      kubernetes.io/service-name: a
  addressType: IPv4
  endpoints:
  - addresses: [198.18.2.1]
";
        let objects = parse_control_file(text).expect("valid");
        assert_eq!(objects.services[0].location.item, Some(0));
        assert_eq!(
            objects.endpoint_slices[0].location,
            Location {
                document: 1,
                item: Some(1)
            }
        );
    }

    #[test]
    fn typed_lists_fill_in_item_kinds() {
        let text = "\
apiVersion: v1
kind: ServiceList
items:
- metadata:
    name: a
  spec:
    ports:
    - port: 80
";
        let objects = parse_control_file(text).expect("valid");
        assert_eq!(
            objects.services[0].object.metadata.name.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn bad_yaml_names_document_and_line() {
        let text = format!("{SERVICE_DOC}---\napiVersion: v1\nkind: Pod\nmetadata: [unclosed\n");
        let message = error(&text);
        assert!(
            message.starts_with("document 2, line "),
            "unexpected: {message}"
        );
        assert!(message.contains("invalid YAML"), "unexpected: {message}");
    }

    fn skipped(objects: &ControlObjects) -> Vec<(String, String)> {
        objects
            .skipped
            .iter()
            .map(|s| (s.location.to_string(), s.object.to_string()))
            .collect()
    }

    #[test]
    fn other_kinds_are_skipped_and_recorded() {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: echo-server\n\
             spec:\n  replicas: 3\n---\n{SERVICE_DOC}---\n\
             apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\n\
             data:\n  a: b\n---\n\
             apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\n"
        );
        let objects = parse_control_file(&text).expect("other kinds are skipped");
        assert_eq!(objects.services.len(), 1);
        assert_eq!(
            skipped(&objects),
            [
                ("document 1", "Deployment default/echo-server"),
                ("document 3", "Namespace shop"),
                ("document 4", "ConfigMap shop/settings"),
                ("document 5", "HorizontalPodAutoscaler"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let deployment = &objects.skipped[0].object;
        assert_eq!(deployment.api_version, "apps/v1");
        assert_eq!(deployment.kind, "Deployment");
        assert_eq!(deployment.namespace.as_deref(), Some("default"));
        assert_eq!(deployment.name.as_deref(), Some("echo-server"));
    }

    #[test]
    fn other_kinds_in_lists_are_skipped() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: echo-server-5d8f7c
    namespace: demo
- apiVersion: v1
  kind: Pod
  metadata:
    name: echo-server-5d8f7c-abcde
    namespace: demo
- apiVersion: apps/v1
  kind: StatefulSet
  metadata:
    name: db
    namespace: demo
---
apiVersion: apps/v1
kind: DeploymentList
items:
- metadata:
    name: web
";
        let objects = parse_control_file(text).expect("other kinds are skipped");
        assert_eq!(objects.pods.len(), 1);
        assert_eq!(objects.pods[0].location.item, Some(1));
        assert_eq!(
            skipped(&objects),
            [
                ("document 1, items[0]", "ReplicaSet demo/echo-server-5d8f7c"),
                ("document 1, items[2]", "StatefulSet demo/db"),
                ("document 2", "DeploymentList"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn kinds_are_named_by_group() {
        // Knative's Service is another resource than the core Service.
        let knative = "apiVersion: serving.knative.dev/v1\nkind: Service\n\
                       metadata:\n  name: hello\nspec:\n  template: {}\n";
        let objects = parse_control_file(knative).expect("skipped");
        assert!(objects.services.is_empty());
        assert_eq!(
            skipped(&objects),
            [("document 1".to_owned(), "Service default/hello".to_owned())]
        );
        // An EndpointSlice in a version cipgw does not read is an error.
        let message = error(
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\n\
             metadata:\n  name: s\naddressType: IPv4\n",
        );
        assert!(
            message.starts_with(
                "document 1 (EndpointSlice default/s): apiVersion: \"discovery.k8s.io/v1beta1\" \
                 is not supported, expected \"discovery.k8s.io/v1\""
            ),
            "unexpected: {message}"
        );
    }

    #[test]
    fn malformed_service_among_skipped_kinds_names_object_and_field() {
        let text = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo-server
---
apiVersion: v1
kind: Service
metadata:
  name: echo-server-clusterip
spec:
  ports:
  - protocol: TCP
    port: [8080]
";
        let message = error(text);
        assert!(
            message.starts_with(
                "document 2 (Service default/echo-server-clusterip), line 13 column 11: \
                 spec.ports[0].port: invalid type"
            ),
            "unexpected: {message}"
        );
        let list = "\
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: echo-server
- apiVersion: v1
  kind: Service
  metadata:
    name: echo-server-clusterip
  spec:
    type: [ClusterIP]
";
        match parse_control_file(list) {
            Err(ControlFileError::Field { object, field, .. }) => {
                assert_eq!(
                    object.to_string(),
                    "document 1, items[1] (Service default/echo-server-clusterip)"
                );
                assert_eq!(field.as_deref(), Some("spec.type"));
            }
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn objects_without_type_fields_and_nested_lists_stay_errors() {
        let message = error(
            "apiVersion: v1\nkind: List\nitems:\n- kind: Deployment\n  metadata:\n    name: web\n",
        );
        assert!(
            message.starts_with(
                "document 1, items[0] (Deployment default/web): apiVersion is missing"
            ),
            "unexpected: {message}"
        );
        let message = error("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n");
        assert_eq!(
            message,
            "document 1, items[0] (List): a List item cannot be a list itself"
        );
    }

    #[test]
    fn missing_kind_is_an_error() {
        let message = error("apiVersion: v1\nmetadata:\n  name: x\n");
        assert_eq!(
            message,
            format!("document 1 (default/x): kind is missing: {SUPPORTED}")
        );
        let message = error("- a\n- b\n");
        assert!(
            message.contains("found a sequence"),
            "unexpected: {message}"
        );
    }

    #[test]
    fn type_error_names_field_and_line() {
        let text = format!(
            "{SERVICE_DOC}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  \
             namespace: shop\nspec:\n  ports:\n  - port: http\n"
        );
        let message = error(&text);
        assert!(
            message.starts_with(
                "document 2 (Service shop/web), line 18 column 11: spec.ports[0].port: invalid type"
            ),
            "unexpected: {message}"
        );
        match parse_control_file(&text) {
            Err(ControlFileError::Field { field, line, .. }) => {
                assert_eq!(field.as_deref(), Some("spec.ports[0].port"));
                assert_eq!(line, Some(18));
            }
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn type_error_in_list_item_names_item_and_field() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: ok
- apiVersion: v1
  kind: Pod
  metadata:
    name: bad
  status:
    conditions: yes
";
        let message = error(text);
        assert_eq!(
            message,
            "document 1, items[1] (Pod default/bad), line 13 column 17: status.conditions: \
             invalid type: string \"yes\", expected a sequence"
        );
    }

    #[test]
    fn type_error_in_typed_list_item_names_field() {
        let text = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata:
    name: s
  addressType: IPv4
  endpoints:
  - addresses: 198.18.2.1
";
        let message = error(text);
        assert!(
            message.starts_with(
                "document 1, items[0] (EndpointSlice default/s): endpoints[0].addresses: invalid type"
            ),
            "unexpected: {message}"
        );
    }

    #[test]
    fn object_ref_display() {
        let name = ServiceName::new("default", "echo");
        let located = ObjectRef::new(
            Some(Location {
                document: 3,
                item: None,
            }),
            "Service",
            name.clone(),
        );
        assert_eq!(located.to_string(), "document 3 (Service default/echo)");
        let api = ObjectRef::new(None, "Service", name);
        assert_eq!(api.to_string(), "Service default/echo");
    }

    #[test]
    fn unknown_fields_are_warnings_naming_object_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
                    ports:\n  - port: 53\n    protocl: UDP\n  selectr:\n    app: web\n";
        let objects = parse_control_file(text).expect("unknown fields are no error");
        assert_eq!(
            objects.warnings,
            [
                "document 1 (Service default/web): unknown field \"spec.ports[0].protocl\"",
                "document 1 (Service default/web): unknown field \"spec.selectr\"",
            ]
        );
    }

    #[test]
    fn nameless_objects_are_errors() {
        for kind in [
            "v1\nkind: Service",
            "v1\nkind: Pod",
            "discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4",
        ] {
            let text = format!("apiVersion: {kind}\nmetadata:\n  namespace: shop\n");
            let error = parse_control_file(&text).expect_err("a nameless object");
            let message = error.to_string();
            assert!(
                message.contains("metadata.name") && message.contains("document 1"),
                "{message}"
            );
        }
    }

    #[test]
    fn every_bad_document_is_reported() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: x\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: good\n\
                    ---\napiVersion: v1\nkind: Pod\nmetadata: {}\n\
                    ---\nkind: Service\n";
        let (objects, errors) = parse_control_file_reporting(text);
        assert_eq!(objects.services.len(), 1, "the good Service is kept");
        let documents: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{documents:#?}");
        for (error, document) in documents
            .iter()
            .zip(["document 1", "document 3", "document 4"])
        {
            assert!(error.starts_with(document), "{error}");
        }
    }
}

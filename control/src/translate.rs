//! The one translation from Kubernetes objects to the service model.
//!
//! Both sources call [`translate`] (or [`translate_lenient`]) with the same
//! k8s-openapi types: the control file with the objects it parsed, each
//! carrying its [`Location`] for error messages; the Kubernetes-API source
//! with the contents of its reflector stores and no locations. The rules
//! are Kubernetes' own:
//!
//! - `spec.type` ClusterIP (the default), NodePort and LoadBalancer have
//!   their ClusterIP forwarded; ExternalName is listed, never forwarded.
//! - `clusterIP: None` is headless: listed with its endpoints, never
//!   forwarded.
//! - Families (dual-stack), as kube-apiserver resolves them:
//!   `spec.ipFamilyPolicy` is SingleStack when absent (RequireDualStack
//!   for a headless Service without selector on a dual-stack gateway);
//!   `spec.ipFamilies` when absent are those of `spec.clusterIPs`, else
//!   the family of the first `--service-cidr`; PreferDualStack and
//!   RequireDualStack add the other family when the gateway has a service
//!   CIDR of it, and RequireDualStack on a gateway of one family is an
//!   error. A family the gateway has no service CIDR for is an error,
//!   except the second of a PreferDualStack Service, which is left out.
//! - `clusterIPs[0]` equals `clusterIP`; at most two, one per family, of
//!   the families of `ipFamilies` in order, two only when the policy is
//!   not SingleStack. Each must lie inside the service CIDR of its family
//!   (not its network or broadcast address); two Services never share
//!   one. A family without an address gets a stable one from the CIDR of
//!   its family ([`crate::allocate`]).
//! - Ports: `port` 1-65535, `protocol` TCP or UDP (default TCP),
//!   `targetPort` a number or a container-port name (default: `port`);
//!   `(port, protocol)` and port names are unique within a Service, and a
//!   Service with several ports names all of them.
//! - Endpoints come from the IPv4 and IPv6 EndpointSlices labelled
//!   `kubernetes.io/service-name: <service>` in the Service's namespace
//!   whenever any slice names the Service (FQDN slices count as present
//!   but add nothing). Otherwise they come from the Pods in the
//!   namespace that the Service's selector matches (each Pod address of
//!   `status.podIP` and `status.podIPs`, the first of each family), the
//!   way the
//!   EndpointSlice controller would build them: every Pod with an IP that
//!   has not terminated (`Succeeded`/`Failed`), `serving` = its Ready
//!   condition, `terminating` = it has a deletionTimestamp, and `ready` =
//!   serving and not terminating (or always, with
//!   `publishNotReadyAddresses`). The data plane picks only ready ones;
//!   listings show the rest.
//! - Slice conditions: `ready` nil means true, `serving` nil means the
//!   same as ready, `terminating` nil means false. An endpoint's address is
//!   its first `addresses` entry, as EndpointSlice consumers must use.
//! - Target ports resolve per endpoint: from a slice, the `ports[]` entry
//!   with the Service port's name and protocol (its number is the target),
//!   else, when the slice lists no ports at all, a numeric targetPort; from
//!   a Pod, a numeric targetPort, or the container port with that name and
//!   protocol. An endpoint whose port does not resolve is left out of that
//!   Service port, as kube-proxy leaves it out.
//! - For DNS: an endpoint's hostname is the slice endpoint's `hostname`,
//!   or a Pod's `spec.hostname` when its `spec.subdomain` is the
//!   Service's name; an ExternalName Service needs an RFC 1123
//!   `spec.externalName` (kept without its trailing dot).
//! - Only endpoints of the Service's families are kept (a slice of
//!   another family, a Pod's address of another family): a VIP is only
//!   ever paired with endpoints of its own family. An address of the
//!   wrong family in a slice is an error, whether or not a Service
//!   selects the object: a control file is checked whole.
//!
//! The output keeps the model's invariants: Services sorted by name,
//! unique VIPs, at most one VIP per family, endpoints only of the
//! Service's families, unique `(port, protocol)` per Service, endpoints
//! sorted and unique by `(ip, port)` (a duplicate keeps its most ready
//! state).

// Errors here end a translation and are built once per bad object: their
// size costs nothing, and boxing their fields would only make matching
// clumsier.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use cipgw_config::control_file::{ControlObjects, Location, ObjectRef, DEFAULT_NAMESPACE};
use cipgw_config::model::LB_ALGORITHM_ANNOTATION;
use cipgw_config::settings::ServiceCidrs;
use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, IpFamily, IpFamilyPolicy, LbAlgorithm, Protocol, Service,
    ServiceKind, ServiceName, ServicePort, ServiceTable, TargetPort, Vips,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::allocate;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One Kubernetes object to translate, and where it was written if it
/// came from a control file.
#[derive(Debug)]
pub struct Object<'a, K> {
    pub object: &'a K,
    pub location: Option<Location>,
}

impl<K> Clone for Object<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Object<'_, K> {}

/// Everything one translation reads.
#[derive(Debug, Default)]
pub struct Objects<'a> {
    pub services: Vec<Object<'a, core::Service>>,
    pub endpoint_slices: Vec<Object<'a, discovery::EndpointSlice>>,
    pub pods: Vec<Object<'a, core::Pod>>,
}

impl<'a> Objects<'a> {
    /// The objects of a parsed control file, with their locations.
    pub fn from_control_file(objects: &'a ControlObjects) -> Self {
        fn located<K>(objects: &[cipgw_config::Located<K>]) -> Vec<Object<'_, K>> {
            objects
                .iter()
                .map(|o| Object {
                    object: &o.object,
                    location: Some(o.location),
                })
                .collect()
        }
        Self {
            services: located(&objects.services),
            endpoint_slices: located(&objects.endpoint_slices),
            pods: located(&objects.pods),
        }
    }

    /// Objects without a file behind them (the Kubernetes API).
    pub fn from_api(
        services: impl IntoIterator<Item = &'a core::Service>,
        endpoint_slices: impl IntoIterator<Item = &'a discovery::EndpointSlice>,
        pods: impl IntoIterator<Item = &'a core::Pod>,
    ) -> Self {
        fn unlocated<'a, K: 'a>(objects: impl IntoIterator<Item = &'a K>) -> Vec<Object<'a, K>> {
            objects
                .into_iter()
                .map(|object| Object {
                    object,
                    location: None,
                })
                .collect()
        }
        Self {
            services: unlocated(services),
            endpoint_slices: unlocated(endpoint_slices),
            pods: unlocated(pods),
        }
    }
}

/// An object that cannot be translated, named with its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A field with a value Kubernetes (or cipgw) does not allow.
    #[error("{object}: {field}: {problem}")]
    Field {
        object: ObjectRef,
        /// Path within the object, e.g. `spec.ports[0].port`.
        field: String,
        problem: Problem,
    },
    /// Two Services with one ClusterIP; `object` is the later in file
    /// order (by name for objects from the API).
    #[error("{object}: {field}: {ip} is already the ClusterIP of {other}")]
    DuplicateClusterIp {
        object: ObjectRef,
        field: String,
        ip: IpAddr,
        other: ObjectRef,
    },
    /// The same Service written twice.
    #[error("{object}: defined twice, first at {other}")]
    DuplicateService { object: ObjectRef, other: ObjectRef },
    /// No address left to allocate for a Service without a ClusterIP.
    #[error(
        "{object}: {field}: no free address left in service CIDR {cidr} \
         ({usable} usable addresses); set {field} or use a larger service CIDR"
    )]
    CidrFull {
        object: ObjectRef,
        /// `spec.clusterIP`, or `spec.clusterIPs[1]` for the second
        /// family of a dual-stack Service.
        field: String,
        cidr: IpNet,
        usable: u32,
    },
}

impl TranslateError {
    /// The object at fault.
    pub fn object(&self) -> &ObjectRef {
        match self {
            TranslateError::Field { object, .. }
            | TranslateError::DuplicateClusterIp { object, .. }
            | TranslateError::DuplicateService { object, .. }
            | TranslateError::CidrFull { object, .. } => object,
        }
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{value} is out of range 1-65535")]
    PortOutOfRange { value: i64 },
    #[error("SCTP is not supported")]
    Sctp,
    #[error("unknown protocol {0:?}: expected TCP or UDP")]
    UnknownProtocol(String),
    #[error(
        "unknown service type {0:?}: expected ClusterIP, NodePort, LoadBalancer or ExternalName"
    )]
    UnknownServiceType(String),
    #[error("{0:?} is not a DNS name (lower-case RFC 1123 labels); type ExternalName needs one")]
    ExternalName(String),
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("{ip} is an {family} address in an {slice} EndpointSlice")]
    WrongFamilyInSlice {
        ip: IpAddr,
        family: IpFamily,
        slice: IpFamily,
    },
    #[error("{ip} is outside the service CIDR {cidr}")]
    OutsideServiceCidr { ip: IpAddr, cidr: IpNet },
    #[error("{ip} is the network or broadcast address of the service CIDR {cidr}")]
    ReservedAddress { ip: IpAddr, cidr: IpNet },
    #[error("{first:?} differs from spec.clusterIP {cluster_ip:?}; they must be equal")]
    ClusterIpsMismatch { first: String, cluster_ip: String },
    #[error(
        "unknown IP family policy {0:?}: expected SingleStack, PreferDualStack or RequireDualStack"
    )]
    UnknownIpFamilyPolicy(String),
    #[error("unknown IP family {0:?}: expected IPv4 or IPv6")]
    UnknownIpFamily(String),
    #[error("{0} is listed twice; a Service has at most one entry per family")]
    DuplicateIpFamily(IpFamily),
    #[error("at most two entries, one per family")]
    TooManyEntries,
    #[error("{ip} is an {family} address, as is {first}; a Service has one address per family")]
    SameFamilyClusterIps {
        ip: IpAddr,
        family: IpFamily,
        first: String,
    },
    #[error("{ip} is an {family} address, but {families_field} is {expected}")]
    FamilyMismatch {
        ip: IpAddr,
        family: IpFamily,
        families_field: String,
        expected: IpFamily,
    },
    #[error(
        "a second family needs spec.ipFamilyPolicy PreferDualStack or RequireDualStack \
         (it is SingleStack)"
    )]
    SecondFamilySingleStack,
    #[error("\"None\" (headless) must be the only entry")]
    HeadlessWithAddress,
    #[error(
        "RequireDualStack, but the gateway's service CIDRs ({cidrs}) are of one family; \
         give --service-cidr once per family"
    )]
    RequireDualStack { cidrs: String },
    #[error("{what}, and the gateway has no {family} service CIDR (--service-cidr {cidrs})")]
    FamilyNotConfigured {
        what: String,
        family: IpFamily,
        cidrs: String,
    },
    #[error("port {port}/{protocol} is already listed at spec.ports[{first}]")]
    DuplicatePort {
        port: u16,
        protocol: Protocol,
        first: usize,
    },
    #[error("{name:?} is already the name of spec.ports[{first}]")]
    DuplicatePortName { name: String, first: usize },
    #[error("required when a Service has more than one port")]
    MissingPortName,
    #[error("{0:?} is a number in quotes: write it without quotes, or name a container port")]
    QuotedPortNumber(String),
    #[error(
        "{0:?} is not a port name (at most 15 lowercase letters, digits and '-', \
         with at least one letter)"
    )]
    BadPortName(String),
    #[error("no address: an endpoint needs at least one")]
    NoAddress,
    #[error("unknown session affinity {0:?}: expected None or ClientIP")]
    UnknownSessionAffinity(String),
    #[error("{0} is out of range 1-86400 seconds")]
    AffinityTimeoutOutOfRange(i64),
    #[error("unknown load-balancing algorithm {0:?}: expected random or maglev")]
    UnknownLbAlgorithm(String),
}

/// Translates `objects` into a service table, or the first error in file
/// order (errors of objects without a location come last).
pub fn translate(
    objects: &Objects<'_>,
    service_cidrs: &ServiceCidrs,
) -> Result<ServiceTable, TranslateError> {
    let (table, errors) = translate_lenient(objects, service_cidrs);
    match errors
        .into_iter()
        .min_by_key(|e| (e.object().location.is_none(), e.object().location))
    {
        Some(error) => Err(error),
        None => Ok(table),
    }
}

/// Translates what can be translated: an object with an error is left out
/// (a Service entirely; an EndpointSlice or Pod from every Service), and
/// every error is returned. For sources that must keep serving when one
/// object is wrong (the Kubernetes API).
pub fn translate_lenient(
    objects: &Objects<'_>,
    service_cidrs: &ServiceCidrs,
) -> (ServiceTable, Vec<TranslateError>) {
    let mut errors = Vec::new();
    let pods = PodIndex::build(&objects.pods, &mut errors);
    let slices = SliceIndex::build(&objects.endpoint_slices, &mut errors);

    let mut specs: Vec<ServiceSpec<'_>> = objects
        .services
        .iter()
        .filter_map(|s| {
            ServiceSpec::parse(*s, service_cidrs)
                .map_err(|e| errors.push(e))
                .ok()
        })
        .collect();
    specs.sort_by(|a, b| {
        (&a.name, a.object.location.is_none(), a.object.location).cmp(&(
            &b.name,
            b.object.location.is_none(),
            b.object.location,
        ))
    });
    specs.dedup_by(|later, first| {
        let duplicate = later.name == first.name;
        if duplicate {
            errors.push(TranslateError::DuplicateService {
                object: later.object.clone(),
                other: first.object.clone(),
            });
        }
        duplicate
    });

    // Fixed ClusterIPs first, then allocation around them.
    // The first claim in file order keeps the address (by name for
    // objects without a location); a Service that loses one is left out
    // whole.
    let mut claims: Vec<usize> = (0..specs.len()).collect();
    claims.sort_by_key(|&i| {
        let location = specs[i].object.location;
        (location.is_none(), location, i)
    });
    let mut owners: HashMap<IpAddr, usize> = HashMap::new();
    let mut dropped = vec![false; specs.len()];
    for i in claims {
        let spec = &specs[i];
        let fixed = spec.slots().filter_map(|slot| match slot {
            Slot::Fixed { ip, field } => Some((*ip, field)),
            Slot::Allocate { .. } => None,
        });
        let mut mine = Vec::new();
        for (ip, field) in fixed {
            if let Some(&owner) = owners.get(&ip) {
                errors.push(TranslateError::DuplicateClusterIp {
                    object: spec.object.clone(),
                    field: field.clone(),
                    ip,
                    other: specs[owner].object.clone(),
                });
                dropped[i] = true;
                break;
            }
            mine.push(ip);
        }
        if !dropped[i] {
            owners.extend(mine.into_iter().map(|ip| (ip, i)));
        }
    }
    let taken: HashSet<IpAddr> = owners.keys().copied().collect();
    let mut allocated: HashMap<(IpFamily, &ServiceName), IpAddr> = HashMap::new();
    for family in service_cidrs.families() {
        let Some(cidr) = service_cidrs.get(family) else {
            continue;
        };
        let wanting = |spec: &ServiceSpec<'_>| {
            spec.slots()
                .any(|slot| matches!(slot, Slot::Allocate { family: f, .. } if *f == family))
        };
        let wanted = specs
            .iter()
            .zip(&dropped)
            .filter(|(s, dropped)| !**dropped && wanting(s))
            .map(|(s, _)| &s.name);
        let got = match allocate::allocate(cidr, &taken, wanted) {
            Ok(got) => got,
            Err(full) => {
                for (i, spec) in specs.iter().enumerate() {
                    let slot = spec.slots().find_map(|slot| match slot {
                        Slot::Allocate { family: f, field } if *f == family => Some(field),
                        _ => None,
                    });
                    if let Some(field) = slot {
                        if !dropped[i] && !full.allocated.contains_key(&spec.name) {
                            errors.push(TranslateError::CidrFull {
                                object: spec.object.clone(),
                                field: field.clone(),
                                cidr,
                                usable: full.usable,
                            });
                            dropped[i] = true;
                        }
                    }
                }
                full.allocated
            }
        };
        for spec in &specs {
            if let Some(ip) = got.get(&spec.name) {
                allocated.insert((family, &spec.name), *ip);
            }
        }
    }

    let services = specs
        .iter()
        .zip(dropped)
        .filter(|(_, dropped)| !dropped)
        .filter_map(|(spec, _)| {
            let cluster_ip = match &spec.address {
                Address::Vips(slots) => {
                    let mut ips = slots.iter().map(|slot| match slot {
                        Slot::Fixed { ip, .. } => Some(*ip),
                        Slot::Allocate { family, .. } => {
                            allocated.get(&(*family, &spec.name)).copied()
                        }
                    });
                    // Every slot has an address here: a Service whose
                    // allocation failed was dropped above.
                    let primary = ips.next().flatten()?;
                    match ips.next() {
                        Some(second) => ClusterIp::Vips(Vips::dual(primary, second?)?),
                        None => ClusterIp::Vips(Vips::single(primary)),
                    }
                }
                Address::Headless => ClusterIp::Headless,
                Address::ExternalName => ClusterIp::ExternalName,
            };
            Some(Service {
                name: spec.name.clone(),
                kind: spec.kind,
                cluster_ip,
                ip_family_policy: spec.policy,
                ip_families: spec.families.clone(),
                session_affinity: spec.affinity,
                lb_algorithm: spec.lb_algorithm,
                external_name: spec.external_name.clone(),
                publish_not_ready_addresses: spec.publish_not_ready,
                ports: spec
                    .ports
                    .iter()
                    .map(|port| ServicePort {
                        name: port.name.clone(),
                        port: port.port,
                        protocol: port.protocol,
                        target_port: port.target.clone(),
                        endpoints: endpoints(spec, port, &slices, &pods),
                    })
                    .collect(),
            })
        })
        .collect();
    (ServiceTable { services }, errors)
}

/// Where one of a Service's VIPs comes from.
enum Slot {
    /// Written in the Service (`field`).
    Fixed { ip: IpAddr, field: String },
    /// Allocated from the service CIDR of `family`; `field` names where
    /// it would have been written.
    Allocate { family: IpFamily, field: String },
}

/// Where a Service's VIPs come from.
enum Address {
    /// One slot per family of the Service, the primary first.
    Vips(Vec<Slot>),
    Headless,
    ExternalName,
}

/// A Service's spec, checked.
struct ServiceSpec<'a> {
    object: ObjectRef,
    name: ServiceName,
    kind: ServiceKind,
    address: Address,
    /// The resolved `ipFamilyPolicy` and `ipFamilies` (empty for
    /// ExternalName).
    policy: IpFamilyPolicy,
    families: Vec<IpFamily>,
    ports: Vec<PortSpec>,
    /// Non-empty selector; `None` selects no Pods.
    selector: Option<&'a BTreeMap<String, String>>,
    publish_not_ready: bool,
    /// Session affinity timeout in seconds, when ClientIP.
    affinity: Option<u32>,
    /// The `cipgw.io/lb-algorithm` annotation, when given.
    lb_algorithm: Option<LbAlgorithm>,
    /// `spec.externalName`, of an ExternalName Service.
    external_name: Option<String>,
}

impl ServiceSpec<'_> {
    /// Its VIP slots (none unless it has VIPs).
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        match &self.address {
            Address::Vips(slots) => slots.as_slice(),
            Address::Headless | Address::ExternalName => &[],
        }
        .iter()
    }
}

struct PortSpec {
    name: Option<String>,
    port: u16,
    protocol: Protocol,
    target: TargetPort,
}

impl<'a> ServiceSpec<'a> {
    fn parse(
        service: Object<'a, core::Service>,
        cidrs: &ServiceCidrs,
    ) -> Result<Self, TranslateError> {
        let name = ObjectRef::name_of(&service.object.metadata);
        let object = ObjectRef::new(service.location, "Service", name.clone());
        let field_error = |field: String, problem: Problem| TranslateError::Field {
            object: object.clone(),
            field,
            problem,
        };
        static NO_SPEC: std::sync::OnceLock<core::ServiceSpec> = std::sync::OnceLock::new();
        let spec = match &service.object.spec {
            Some(spec) => spec,
            None => NO_SPEC.get_or_init(core::ServiceSpec::default),
        };

        let kind = match spec.type_.as_deref().unwrap_or_default() {
            "" | "ClusterIP" => ServiceKind::ClusterIp,
            "NodePort" => ServiceKind::NodePort,
            "LoadBalancer" => ServiceKind::LoadBalancer,
            "ExternalName" => ServiceKind::ExternalName,
            other => {
                return Err(field_error(
                    "spec.type".into(),
                    Problem::UnknownServiceType(other.into()),
                ))
            }
        };
        let mut external_name = None;
        let selector = spec.selector.as_ref().filter(|s| !s.is_empty());
        let (address, policy, families) = if kind == ServiceKind::ExternalName {
            external_name = Some(
                external_name_of(spec)
                    .map_err(|problem| field_error("spec.externalName".into(), problem))?,
            );
            (
                Address::ExternalName,
                IpFamilyPolicy::SingleStack,
                Vec::new(),
            )
        } else {
            cluster_address(spec, cidrs, selector.is_some())
                .map_err(|(field, problem)| field_error(field, problem))?
        };
        let ports = parse_ports(spec.ports.as_deref().unwrap_or_default())
            .map_err(|(field, problem)| field_error(field, problem))?;
        let affinity =
            session_affinity(spec).map_err(|(field, problem)| field_error(field, problem))?;
        let lb_algorithm = lb_algorithm(&service.object.metadata)
            .map_err(|(field, problem)| field_error(field, problem))?;
        Ok(Self {
            affinity,
            lb_algorithm,
            name,
            kind,
            address,
            policy,
            families,
            ports,
            selector,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            external_name,
            object,
        })
    }
}

type FieldProblem = (String, Problem);

/// The `cipgw.io/lb-algorithm` annotation: `random`, `maglev`, or absent
/// (the gateway's `--lb`).
fn lb_algorithm(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Option<LbAlgorithm>, FieldProblem> {
    let Some(value) = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
    else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| {
        (
            format!("metadata.annotations[{LB_ALGORITHM_ANNOTATION:?}]"),
            Problem::UnknownLbAlgorithm(value.clone()),
        )
    })
}

/// `spec.externalName`, as Kubernetes validates it: a lower-case RFC 1123
/// DNS name (a trailing dot allowed), required for type ExternalName.
fn external_name_of(spec: &core::ServiceSpec) -> Result<String, Problem> {
    let name = spec.external_name.as_deref().unwrap_or_default();
    let bare = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(Problem::ExternalName(name.to_owned()));
    }
    Ok(bare.to_owned())
}

/// `spec.sessionAffinity` and its timeout, as Kubernetes validates them.
fn session_affinity(spec: &core::ServiceSpec) -> Result<Option<u32>, FieldProblem> {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "" | "None" => Ok(None),
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(
                    i64::from(cipgw_config::model::DEFAULT_AFFINITY_TIMEOUT),
                    i64::from,
                );
            match u32::try_from(timeout) {
                Ok(t) if (1..=cipgw_config::model::MAX_AFFINITY_TIMEOUT).contains(&t) => {
                    Ok(Some(t))
                }
                _ => Err((
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                    Problem::AffinityTimeoutOutOfRange(timeout),
                )),
            }
        }
        other => Err((
            "spec.sessionAffinity".into(),
            Problem::UnknownSessionAffinity(other.into()),
        )),
    }
}

/// `spec.ipFamilyPolicy`, `spec.ipFamilies`, `spec.clusterIP` and
/// `spec.clusterIPs`, resolved as kube-apiserver resolves them against
/// the gateway's service CIDRs (see the module's rules).
fn cluster_address(
    spec: &core::ServiceSpec,
    cidrs: &ServiceCidrs,
    has_selector: bool,
) -> Result<(Address, IpFamilyPolicy, Vec<IpFamily>), FieldProblem> {
    let policy_given = match spec.ip_family_policy.as_deref() {
        None | Some("") => None,
        Some("SingleStack") => Some(IpFamilyPolicy::SingleStack),
        Some("PreferDualStack") => Some(IpFamilyPolicy::PreferDualStack),
        Some("RequireDualStack") => Some(IpFamilyPolicy::RequireDualStack),
        Some(other) => {
            return Err((
                "spec.ipFamilyPolicy".into(),
                Problem::UnknownIpFamilyPolicy(other.into()),
            ))
        }
    };
    let mut families_given: Vec<IpFamily> = Vec::new();
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        let field = || format!("spec.ipFamilies[{i}]");
        let family = match family.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            other => return Err((field(), Problem::UnknownIpFamily(other.into()))),
        };
        if families_given.contains(&family) {
            return Err((field(), Problem::DuplicateIpFamily(family)));
        }
        if i >= 2 {
            return Err((field(), Problem::TooManyEntries));
        }
        families_given.push(family);
    }

    let primary = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let list = spec.cluster_ips.as_deref().unwrap_or_default();
    if let (Some(primary), Some(first)) = (primary, list.first()) {
        if primary != first {
            return Err((
                "spec.clusterIPs[0]".into(),
                Problem::ClusterIpsMismatch {
                    first: first.clone(),
                    cluster_ip: primary.into(),
                },
            ));
        }
    }
    // (field, value) in order: the primary, then the other.
    let mut written: Vec<(String, &str)> = Vec::new();
    if let Some(primary) = primary {
        written.push(("spec.clusterIP".into(), primary));
    }
    for (i, ip) in list.iter().enumerate() {
        if i > 0 || primary.is_none() {
            written.push((format!("spec.clusterIPs[{i}]"), ip));
        }
    }
    let headless = written.first().is_some_and(|(_, v)| *v == "None");
    let mut ips: Vec<(String, IpAddr)> = Vec::new();
    if headless {
        if let Some((field, _)) = written.get(1) {
            return Err((field.clone(), Problem::HeadlessWithAddress));
        }
    } else {
        for (i, (field, value)) in written.into_iter().enumerate() {
            let ip = parse_ip(value).map_err(|problem| (field.clone(), problem))?;
            if i >= 2 {
                return Err((field, Problem::TooManyEntries));
            }
            if let Some((first, _)) = ips
                .iter()
                .find(|(_, o)| IpFamily::of(*o) == IpFamily::of(ip))
            {
                return Err((
                    field,
                    Problem::SameFamilyClusterIps {
                        ip,
                        family: IpFamily::of(ip),
                        first: first.clone(),
                    },
                ));
            }
            if let Some(&expected) = families_given.get(i) {
                if expected != IpFamily::of(ip) {
                    return Err((
                        field,
                        Problem::FamilyMismatch {
                            ip,
                            family: IpFamily::of(ip),
                            families_field: format!("spec.ipFamilies[{i}]"),
                            expected,
                        },
                    ));
                }
            }
            ips.push((field, ip));
        }
    }

    // kube-apiserver's defaults: SingleStack, but a headless Service
    // without selector on a dual-stack cluster is RequireDualStack.
    let policy = policy_given.unwrap_or(if headless && !has_selector && cidrs.is_dual() {
        IpFamilyPolicy::RequireDualStack
    } else {
        IpFamilyPolicy::SingleStack
    });
    if policy == IpFamilyPolicy::SingleStack {
        if let Some((field, _)) = ips.get(1) {
            return Err((field.clone(), Problem::SecondFamilySingleStack));
        }
        if families_given.len() > 1 {
            return Err((
                "spec.ipFamilies[1]".into(),
                Problem::SecondFamilySingleStack,
            ));
        }
    }
    if policy == IpFamilyPolicy::RequireDualStack && !cidrs.is_dual() {
        return Err((
            "spec.ipFamilyPolicy".into(),
            Problem::RequireDualStack {
                cidrs: cidrs.to_string(),
            },
        ));
    }
    let mut families = families_given.clone();
    for (_, ip) in &ips {
        if !families.contains(&IpFamily::of(*ip)) {
            families.push(IpFamily::of(*ip));
        }
    }
    if families.is_empty() {
        families.push(cidrs.primary());
    }
    if policy != IpFamilyPolicy::SingleStack && families.len() == 1 {
        let other = families[0].other();
        if cidrs.get(other).is_some() {
            families.push(other);
        }
    }
    // Families the gateway has no CIDR for: the second of a
    // PreferDualStack Service is left out (it prefers, it does not
    // need); any other is an error.
    let mut kept = Vec::with_capacity(families.len());
    for (i, family) in families.iter().copied().enumerate() {
        let Some(cidr) = cidrs.get(family) else {
            if policy == IpFamilyPolicy::PreferDualStack && i == 1 {
                continue;
            }
            let (field, what) = match (ips.get(i), families_given.get(i)) {
                (Some((field, ip)), _) => (field.clone(), format!("{ip} is an {family} address")),
                (None, Some(_)) => (
                    format!("spec.ipFamilies[{i}]"),
                    format!("{family} is asked for"),
                ),
                (None, None) => ("spec.ipFamilies".into(), format!("{family} is asked for")),
            };
            return Err((
                field,
                Problem::FamilyNotConfigured {
                    what,
                    family,
                    cidrs: cidrs.to_string(),
                },
            ));
        };
        let slot = match ips.get(i) {
            Some((field, ip)) => {
                check_in_cidr(*ip, cidr).map_err(|problem| (field.clone(), problem))?;
                Slot::Fixed {
                    ip: *ip,
                    field: field.clone(),
                }
            }
            None => Slot::Allocate {
                family,
                field: if i == 0 {
                    "spec.clusterIP".into()
                } else {
                    format!("spec.clusterIPs[{i}]")
                },
            },
        };
        kept.push((family, slot));
    }
    let families: Vec<IpFamily> = kept.iter().map(|(f, _)| *f).collect();
    let address = if headless {
        Address::Headless
    } else {
        Address::Vips(kept.into_iter().map(|(_, slot)| slot).collect())
    };
    Ok((address, policy, families))
}

fn check_in_cidr(ip: IpAddr, cidr: IpNet) -> Result<(), Problem> {
    let cidr = cidr.trunc();
    if !cidr.contains(&ip) {
        return Err(Problem::OutsideServiceCidr { ip, cidr });
    }
    let reserved = match cidr {
        IpNet::V4(net) => net.prefix_len() <= 30 && (ip == net.network() || ip == net.broadcast()),
        // No broadcast in IPv6; the network address is the Subnet-Router
        // anycast address (RFC 4291, 2.6.1).
        IpNet::V6(net) => net.prefix_len() <= 126 && ip == net.network(),
    };
    if reserved {
        return Err(Problem::ReservedAddress { ip, cidr });
    }
    Ok(())
}

fn parse_ip(value: &str) -> Result<IpAddr, Problem> {
    value
        .parse::<IpAddr>()
        .map_err(|_| Problem::BadIp(value.into()))
}

fn parse_ports(ports: &[core::ServicePort]) -> Result<Vec<PortSpec>, FieldProblem> {
    let mut out: Vec<PortSpec> = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let field = |name: &str| format!("spec.ports[{i}].{name}");
        let port = port_number(p.port).map_err(|e| (field("port"), e))?;
        let protocol = parse_protocol(p.protocol.as_deref()).map_err(|e| (field("protocol"), e))?;
        let name = p.name.clone().filter(|n| !n.is_empty());
        let target = match &p.target_port {
            // Kubernetes defaults an absent, 0 or "" targetPort to port.
            None => TargetPort::Number(port),
            Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_number(*n).map_err(|e| (field("targetPort"), e))?)
            }
            Some(IntOrString::String(s)) => {
                TargetPort::Name(port_name(s).map_err(|e| (field("targetPort"), e))?)
            }
        };
        if let Some(first) = out
            .iter()
            .position(|o| o.port == port && o.protocol == protocol)
        {
            return Err((
                format!("spec.ports[{i}]"),
                Problem::DuplicatePort {
                    port,
                    protocol,
                    first,
                },
            ));
        }
        if let Some(name) = &name {
            if let Some(first) = out.iter().position(|o| o.name.as_ref() == Some(name)) {
                return Err((
                    field("name"),
                    Problem::DuplicatePortName {
                        name: name.clone(),
                        first,
                    },
                ));
            }
        }
        out.push(PortSpec {
            name,
            port,
            protocol,
            target,
        });
    }
    if out.len() > 1 {
        if let Some(i) = out.iter().position(|p| p.name.is_none()) {
            return Err((format!("spec.ports[{i}].name"), Problem::MissingPortName));
        }
    }
    Ok(out)
}

fn port_number(value: i32) -> Result<u16, Problem> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(Problem::PortOutOfRange {
            value: value.into(),
        }),
    }
}

/// A container-port name as Kubernetes allows it (IANA service name
/// syntax, RFC 6335 section 5.1).
fn port_name(name: &str) -> Result<String, Problem> {
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::QuotedPortNumber(name.into()));
    }
    let valid = name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(name.into())
    } else {
        Err(Problem::BadPortName(name.into()))
    }
}

fn parse_protocol(value: Option<&str>) -> Result<Protocol, Problem> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Err(Problem::Sctp),
        other => Err(Problem::UnknownProtocol(other.into())),
    }
}

/// A protocol as other objects (container ports, slice ports) name it;
/// SCTP and unknown names match no Service port.
fn protocol_of(value: Option<&str>) -> Option<Protocol> {
    parse_protocol(value).ok()
}

/// The endpoints of one Service port, sorted and unique by `(ip, port)`.
fn endpoints(
    spec: &ServiceSpec<'_>,
    port: &PortSpec,
    slices: &SliceIndex<'_>,
    pods: &PodIndex<'_>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let key = (spec.name.namespace.as_str(), spec.name.name.as_str());
    if let Some(service_slices) = slices.by_service.get(&key) {
        for slice in service_slices {
            slice.endpoints_for(port, &mut out);
        }
    } else if let Some(selector) = spec.selector {
        for pod in pods.select(&spec.name.namespace, selector) {
            pod.endpoint_for(port, spec, &mut out);
        }
    }
    // Only the Service's families: a VIP never goes to another family.
    out.retain(|e| spec.families.contains(&IpFamily::of(e.ip)));
    out.sort_by(|a, b| {
        (a.ip, a.port)
            .cmp(&(b.ip, b.port))
            // Among duplicates, the most ready first: that one is kept.
            .then(b.state.ready.cmp(&a.state.ready))
            .then(b.state.serving.cmp(&a.state.serving))
            .then(a.state.terminating.cmp(&b.state.terminating))
            .then(a.pod.cmp(&b.pod))
    });
    out.dedup_by_key(|e| (e.ip, e.port));
    out
}

/// An EndpointSlice, checked.
struct SliceInfo<'a> {
    /// Only IPv4 and IPv6 slices carry endpoints; FQDN ones only mark the
    /// Service as having slices.
    ports: Vec<SlicePort<'a>>,
    /// Address (of the slice's family), conditions, Pod name and hostname.
    endpoints: Vec<(IpAddr, EndpointState, Option<&'a str>, Option<&'a str>)>,
}

struct SlicePort<'a> {
    name: Option<&'a str>,
    protocol: Option<Protocol>,
    port: Option<u16>,
}

impl SliceInfo<'_> {
    fn endpoints_for(&self, port: &PortSpec, out: &mut Vec<Endpoint>) {
        let numeric = match port.target {
            TargetPort::Number(n) => Some(n),
            TargetPort::Name(_) => None,
        };
        let matching = self
            .ports
            .iter()
            .find(|p| p.name == port.name.as_deref() && p.protocol == Some(port.protocol));
        let target = match matching {
            Some(p) => p.port.or(numeric),
            None if self.ports.is_empty() => numeric,
            None => None,
        };
        let Some(target) = target else { return };
        out.extend(
            self.endpoints
                .iter()
                .map(|(ip, state, pod, hostname)| Endpoint {
                    ip: *ip,
                    port: target,
                    state: *state,
                    pod: pod.map(str::to_owned),
                    hostname: hostname.map(str::to_owned),
                }),
        );
    }
}

/// EndpointSlices by `(namespace, service name)`.
struct SliceIndex<'a> {
    by_service: HashMap<(&'a str, &'a str), Vec<SliceInfo<'a>>>,
}

impl<'a> SliceIndex<'a> {
    fn build(
        slices: &[Object<'a, discovery::EndpointSlice>],
        errors: &mut Vec<TranslateError>,
    ) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<SliceInfo<'_>>> = HashMap::new();
        for slice in slices {
            let metadata = &slice.object.metadata;
            let Some(service) = metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                // Belongs to no Service: Kubernetes ignores it too.
                continue;
            };
            let namespace = metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            // Present even when invalid or not IPv4: the Service's
            // endpoints come from slices, not from Pods.
            let entry = by_service.entry((namespace, service.as_str())).or_default();
            match check_slice(slice.object) {
                Ok(info) => entry.push(info),
                Err((field, problem)) => errors.push(TranslateError::Field {
                    object: ObjectRef::new(
                        slice.location,
                        "EndpointSlice",
                        ObjectRef::name_of(metadata),
                    ),
                    field,
                    problem,
                }),
            }
        }
        Self { by_service }
    }
}

fn check_slice(slice: &discovery::EndpointSlice) -> Result<SliceInfo<'_>, FieldProblem> {
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        _ => {
            return Ok(SliceInfo {
                ports: Vec::new(),
                endpoints: Vec::new(),
            })
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let port = p
            .port
            .map(port_number)
            .transpose()
            .map_err(|e| (format!("ports[{i}].port"), e))?;
        ports.push(SlicePort {
            name: p.name.as_deref().filter(|n| !n.is_empty()),
            protocol: protocol_of(p.protocol.as_deref()),
            port,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let Some(address) = endpoint.addresses.first() else {
            return Err((format!("endpoints[{i}].addresses"), Problem::NoAddress));
        };
        let field = || format!("endpoints[{i}].addresses[0]");
        let ip = parse_ip(address).map_err(|e| (field(), e))?;
        if IpFamily::of(ip) != family {
            return Err((
                field(),
                Problem::WrongFamilyInSlice {
                    ip,
                    family: IpFamily::of(ip),
                    slice: family,
                },
            ));
        }
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let state = EndpointState {
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        };
        let pod = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.as_deref());
        let hostname = endpoint.hostname.as_deref().filter(|h| !h.is_empty());
        endpoints.push((ip, state, pod, hostname));
    }
    Ok(SliceInfo { ports, endpoints })
}

/// A Pod that can be an endpoint, checked.
struct PodInfo<'a> {
    name: &'a str,
    labels: Option<&'a BTreeMap<String, String>>,
    /// Its addresses, at most one per family, the primary first.
    ips: Vec<IpAddr>,
    /// The Ready condition is True.
    serving: bool,
    terminating: bool,
    /// Named container ports: (name, protocol, number).
    ports: Vec<(&'a str, Option<Protocol>, u16)>,
    /// `spec.hostname` and `spec.subdomain`, when set.
    hostname: Option<&'a str>,
    subdomain: Option<&'a str>,
}

impl PodInfo<'_> {
    fn endpoint_for(&self, port: &PortSpec, service: &ServiceSpec<'_>, out: &mut Vec<Endpoint>) {
        let publish_not_ready = service.publish_not_ready;
        let target = match &port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .ports
                .iter()
                .find(|(n, protocol, _)| n == name && *protocol == Some(port.protocol))
                .map(|(_, _, number)| *number),
        };
        let Some(target) = target else { return };
        out.extend(self.ips.iter().map(|ip| {
            Endpoint {
                ip: *ip,
                port: target,
                state: EndpointState {
                    // As the EndpointSlice controller sets it.
                    ready: publish_not_ready || (self.serving && !self.terminating),
                    serving: self.serving,
                    terminating: self.terminating,
                },
                pod: Some(self.name.to_owned()),
                // As the EndpointSlice controller sets it: the Pod asked to be
                // named under this Service (the namespace matches: Pods are
                // selected from the Service's own).
                hostname: self
                    .hostname
                    .filter(|_| self.subdomain == Some(service.name.name.as_str()))
                    .map(str::to_owned),
            }
        }));
    }

    fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        let Some(labels) = self.labels else {
            return false;
        };
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Pods by `(namespace, label, value)`, to select without scanning.
struct PodIndex<'a> {
    pods: Vec<PodInfo<'a>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
}

impl<'a> PodIndex<'a> {
    fn build(pods: &[Object<'a, core::Pod>], errors: &mut Vec<TranslateError>) -> Self {
        let mut index = Self {
            pods: Vec::new(),
            by_label: HashMap::new(),
        };
        for pod in pods {
            let metadata = &pod.object.metadata;
            let info = match check_pod(pod.object) {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err((field, problem)) => {
                    errors.push(TranslateError::Field {
                        object: ObjectRef::new(pod.location, "Pod", ObjectRef::name_of(metadata)),
                        field,
                        problem,
                    });
                    continue;
                }
            };
            let namespace = metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            for (key, value) in info.labels.into_iter().flatten() {
                index
                    .by_label
                    .entry((namespace, key, value))
                    .or_default()
                    .push(index.pods.len());
            }
            index.pods.push(info);
        }
        index
    }

    /// Pods of `namespace` whose labels match every pair of `selector`
    /// (non-empty).
    fn select<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s PodInfo<'a>> + 's {
        let shortest = selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(namespace, k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|candidates| candidates.len())
            .unwrap_or_default();
        shortest
            .iter()
            .map(|&i| &self.pods[i])
            .filter(move |pod| pod.matches(selector))
    }
}

/// `None` for a Pod that is no endpoint: no IP yet, or terminated.
fn check_pod(pod: &core::Pod) -> Result<Option<PodInfo<'_>>, FieldProblem> {
    let Some(status) = pod.status.as_ref() else {
        return Ok(None);
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    // The primary address first, then the others (dual-stack).
    let mut candidates: Vec<(String, &str)> = Vec::new();
    if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        candidates.push(("status.podIP".into(), ip));
    }
    for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
        candidates.push((format!("status.podIPs[{i}].ip"), &ip.ip));
    }
    // The first address of each family (Kubernetes allows one per
    // family; `podIP` repeats `podIPs[0]`).
    let mut ips: Vec<IpAddr> = Vec::with_capacity(2);
    for (field, value) in candidates {
        let ip = parse_ip(value).map_err(|problem| (field, problem))?;
        if !ips.iter().any(|o| IpFamily::of(*o) == IpFamily::of(ip)) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return Ok(None);
    }

    let mut ports = Vec::new();
    if let Some(spec) = &pod.spec {
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.containers[{i}]"), c));
        // Sidecars (restartable init containers) serve ports too.
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
        for (field, container) in containers.chain(sidecars) {
            for (j, p) in container.ports.iter().flatten().enumerate() {
                let number = port_number(p.container_port)
                    .map_err(|e| (format!("{field}.ports[{j}].containerPort"), e))?;
                if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                    ports.push((name, protocol_of(p.protocol.as_deref()), number));
                }
            }
        }
    }

    let serving = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Ok(Some(PodInfo {
        name: pod.metadata.name.as_deref().unwrap_or_default(),
        labels: pod.metadata.labels.as_ref(),
        ips,
        serving,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        ports,
        hostname: pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.as_deref())
            .filter(|h| !h.is_empty()),
        subdomain: pod
            .spec
            .as_ref()
            .and_then(|s| s.subdomain.as_deref())
            .filter(|s| !s.is_empty()),
    }))
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;

//! The Kubernetes API as a live source: v1 Services and
//! discovery.k8s.io/v1 EndpointSlices of all namespaces, watched with
//! kube-runtime and translated into tables.
//!
//! The daemon is synchronous, so the source brings its own tokio runtime
//! (one thread, current-thread scheduler) and reports over the channel of
//! [`SourceEvent`]s like every other source.
//!
//! Rules, as kube-proxy keeps them:
//! - a Service labelled `service.kubernetes.io/service-proxy-name` is
//!   somebody else's unless the value is this gateway's name
//!   (`--proxy-name`); a Service without a ClusterIP (the API server has
//!   not assigned one yet) is skipped: nothing is allocated in this mode;
//!   headless and ExternalName Services are listed, never forwarded (the
//!   translation's rule);
//! - each resource has a watcher with a reflector store; a (re)list,
//!   `Init` ... `InitDone`, replaces the store at once, so objects that
//!   were deleted while the watch was down are gone after it. No table is
//!   built before both resources have been listed once; the first one is
//!   followed by `Synced`;
//! - tables are built at most once per `min_sync_period` ([`Coalescer`]);
//!   one that equals the last is not sent;
//! - translation is lenient: an object with an error is left out and
//!   reported (`Invalid`), the others are still forwarded;
//! - watch errors are retried after 250 ms doubling to at most 2 s, back
//!   to 250 ms after 5 s without an error (`WatchBackoff`, shorter than
//!   kube-runtime's default). When the API server cannot be reached,
//!   or refuses the list or watch (RBAC, errors), `Disconnected` is sent
//!   once and the last table stays; every [`PROBE_EVERY`] a one-item list
//!   of each resource checks whether it answers again (`Reconnected`): the
//!   request the watchers need, so a server that answers but forbids does
//!   not count as back. A watch that merely ends or breaks, or an expired
//!   resource version (`410 Gone`, which forces a relist), is routine and
//!   reported to nobody but the log.
//! - network programming latency, as kube-proxy measures it: every
//!   EndpointSlice written (added, changed, or relisted with a new value)
//!   carries its `endpoints.kubernetes.io/last-change-trigger-time`, the
//!   time of the Pod or Service change that caused the write; each one
//!   newer than the source's start and not yet in a table is sent with
//!   the next table (one sample each), and dropped when that table is
//!   the last one again (the change did nothing to forwarding). A
//!   missing or unparsable annotation gives no sample; a deleted slice
//!   drops its Service's pending times (its annotation dates from its
//!   last write, not from the deletion).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cipgw_config::settings::ServiceCidrs;
use cipgw_config::ServiceTable;
use crossbeam::channel::Sender;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::coalesce::Coalescer;
use crate::source::{SourceError, SourceEvent, SourceHandle, DEFAULT_MIN_SYNC_PERIOD};
use crate::translate::{translate_lenient, Objects, TranslateError};

/// The label with which a Service names the proxy that serves it.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The proxy name cipgw answers to unless told otherwise (defined with
/// the other daemon settings).
pub use cipgw_config::settings::DEFAULT_PROXY_NAME;

/// The annotation with which the EndpointSlice controller stamps a slice
/// with the time of the change that caused its write.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Quiet time after an event before a table is built: the events of one
/// change (a Service and its slice, a rollout step) arrive together.
pub const SETTLE: Duration = Duration::from_millis(20);

/// How often an unreachable API server is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the runtime gets to wind down its connections on stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(500);

/// Settings of the Kubernetes source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSourceConfig {
    /// A kubeconfig file; `None`: the standard inference (`$KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// The `service.kubernetes.io/service-proxy-name` value this gateway
    /// serves besides unlabelled Services.
    pub proxy_name: String,
    /// The cluster's service CIDR: ClusterIPs outside it are reported and
    /// left out.
    pub service_cidrs: ServiceCidrs,
    /// At most one table per period.
    pub min_sync_period: Duration,
}

impl KubeSourceConfig {
    /// Defaults for everything but the service CIDR: inferred
    /// configuration, proxy name `cipgw`, one table per second at most.
    pub fn new(service_cidrs: ServiceCidrs) -> Self {
        Self {
            kubeconfig: None,
            proxy_name: DEFAULT_PROXY_NAME.to_owned(),
            service_cidrs,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
        }
    }
}

/// Whether this gateway forwards `service`: not another proxy's (by the
/// service-proxy-name label), and with a ClusterIP assigned (or of type
/// ExternalName, which has none and is only listed).
pub fn is_selected(service: &Service, proxy_name: &str) -> bool {
    let label = service
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_PROXY_NAME_LABEL));
    if label.is_some_and(|name| name != proxy_name) {
        return false;
    }
    let spec = service.spec.as_ref();
    let external_name = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let has_cluster_ip = spec
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    external_name || has_cluster_ip
}

/// The table for the objects of the API, with the errors of the objects
/// left out of it.
pub fn build_table<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    endpoint_slices: impl IntoIterator<Item = &'a EndpointSlice>,
    proxy_name: &str,
    service_cidrs: ServiceCidrs,
) -> (ServiceTable, Vec<TranslateError>) {
    let services = services.into_iter().filter(|s| is_selected(s, proxy_name));
    let objects = Objects::from_api(services, endpoint_slices, std::iter::empty::<&Pod>());
    translate_lenient(&objects, &service_cidrs)
}

/// Starts the Kubernetes source. The client configuration is loaded
/// before this returns (a bad kubeconfig is an error here); connecting is
/// the source's business: an unreachable API server is reported as
/// `Disconnected` and retried.
pub fn spawn_kube_source(
    config: KubeSourceConfig,
    tx: Sender<SourceEvent>,
) -> Result<SourceHandle, SourceError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| SourceError::Thread {
            what: "Kubernetes source's runtime",
            error,
        })?;
    let client = runtime.block_on(client(config.kubeconfig.as_deref()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("cipgw-kube-src".into())
        .spawn(move || {
            runtime.block_on(run(client, config, tx, stop_rx));
            runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        })
        .map_err(|error| SourceError::Thread {
            what: "Kubernetes source",
            error,
        })?;
    Ok(SourceHandle::new(
        "kubernetes",
        Box::new(move || {
            // Gone only if the thread has already ended.
            let _ = stop_tx.send(());
        }),
        thread,
    ))
}

/// A client for the kubeconfig at `path`, or the inferred configuration.
async fn client(path: Option<&Path>) -> Result<Client, SourceError> {
    let config = match path {
        Some(path) => {
            let kubeconfig_error = |error| SourceError::Kubeconfig {
                path: path.to_owned(),
                error,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// The two watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Services = 0,
    EndpointSlices = 1,
}

impl Resource {
    const fn as_str(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
        }
    }
}

/// What a watcher's item means for the source.
#[derive(Debug)]
enum Step {
    /// A (re)list begins.
    Starting,
    /// Part of a (re)list in progress: the store has not changed yet.
    Listing,
    /// A (re)list is complete and in the store.
    Listed,
    /// An object was added, changed or deleted.
    Changed,
    /// The watch broke or expired (410): the watcher resumes or relists
    /// by itself.
    Routine(String),
    /// The API server cannot be reached, or answers the list or watch
    /// with an error.
    Failed(String),
}

impl Step {
    fn of<K>(item: &Result<watcher::Event<K>, watcher::Error>) -> Self {
        match item {
            // Sent before the list request is made: no sign of an answer.
            Ok(watcher::Event::Init) => Step::Starting,
            Ok(watcher::Event::InitApply(_)) => Step::Listing,
            Ok(watcher::Event::InitDone) => Step::Listed,
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Step::Changed,
            Err(error @ watcher::Error::WatchFailed(_)) => Step::Routine(error.to_string()),
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                Step::Routine(format!("resource version expired, relisting: {status}"))
            }
            Err(error) => Step::Failed(error.to_string()),
        }
    }
}

/// The source's state, owned by its task.
struct Syncer {
    proxy_name: String,
    service_cidrs: ServiceCidrs,
    tx: Sender<SourceEvent>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    coalescer: Coalescer,
    /// Whether each resource has been listed once.
    listed: [bool; 2],
    synced: bool,
    /// Which resources' last request failed; disconnected while any.
    failing: [bool; 2],
    /// The last table sent and the problems reported since.
    table: Option<Arc<ServiceTable>>,
    errors: BTreeSet<String>,
    /// Change times the next table carries.
    triggers: TriggerTimes,
}

/// The `last-change-trigger-time`s of EndpointSlice writes not yet in a
/// table (the module's rules, which are kube-proxy's).
#[derive(Debug)]
struct TriggerTimes {
    /// Times before this belong to changes made before the gateway
    /// watched (the first list brings every slice, however old).
    started: SystemTime,
    /// The last annotation seen per slice (namespace, name): a relist or
    /// a write that leaves it unchanged is not a new change.
    seen: HashMap<(String, String), SystemTime>,
    /// Pending times per Service (namespace, name).
    pending: HashMap<(String, String), Vec<SystemTime>>,
}

impl TriggerTimes {
    fn new(started: SystemTime) -> Self {
        Self {
            started,
            seen: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Notes what one EndpointSlice watcher item says.
    fn note(&mut self, item: &Result<watcher::Event<EndpointSlice>, watcher::Error>) {
        match item {
            Ok(watcher::Event::Apply(slice) | watcher::Event::InitApply(slice)) => {
                self.written(slice)
            }
            Ok(watcher::Event::Delete(slice)) => {
                let (slice_key, service) = Self::keys(slice);
                self.seen.remove(&slice_key);
                if let Some(service) = service {
                    self.pending.remove(&service);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => {}
        }
    }

    fn written(&mut self, slice: &EndpointSlice) {
        let (slice_key, service) = Self::keys(slice);
        let Some(time) = trigger_time(slice) else {
            return;
        };
        if self.seen.insert(slice_key, time) == Some(time) || time < self.started {
            return;
        }
        if let Some(service) = service {
            self.pending.entry(service).or_default().push(time);
        }
    }

    /// The slice's (namespace, name) and its Service's, if labelled.
    fn keys(slice: &EndpointSlice) -> ((String, String), Option<(String, String)>) {
        let meta = &slice.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let service = meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .map(|name| (namespace.clone(), name.clone()));
        ((namespace, meta.name.clone().unwrap_or_default()), service)
    }

    /// Every pending time, forgotten here.
    fn take(&mut self) -> Vec<SystemTime> {
        self.pending.drain().flat_map(|(_, times)| times).collect()
    }
}

/// A slice's `last-change-trigger-time` (RFC 3339); `None` when missing
/// or unparsable (no sample, as kube-proxy).
fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME)?;
    let time: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    let since_epoch = Duration::new(
        u64::try_from(time.as_second()).ok()?,
        u32::try_from(time.subsec_nanosecond()).ok()?,
    );
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// The watchers' retry delays: 250 ms doubling to at most 2 s, and back
/// to 250 ms after 5 s without an error. kube-runtime's default (800 ms to
/// 30 s, reset only after 2 min) left a gateway on a mixed old/new table
/// for 12-18 s after a short API outage, because the relist that follows
/// a 410 waited out a delay grown during the outage. A gateway is one
/// client among few; a short cap costs the API server little.
#[derive(Debug, Clone)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(2);
    const RESET_AFTER: Duration = Duration::from_secs(5);

    fn new() -> ResetTimerBackoff<WatchBackoff> {
        ResetTimerBackoff::new(WatchBackoff { next: Self::FIRST }, Self::RESET_AFTER)
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

async fn run(
    client: Client,
    config: KubeSourceConfig,
    tx: Sender<SourceEvent>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (services, services_writer) = reflector::store::<Service>();
    let (endpoint_slices, slices_writer) = reflector::store::<EndpointSlice>();
    let watch = watcher::Config::default();
    let mut service_events = pin!(watcher(Api::<Service>::all(client.clone()), watch.clone())
        .backoff(WatchBackoff::new())
        .reflect(services_writer));
    let mut slice_events = pin!(watcher(Api::<EndpointSlice>::all(client.clone()), watch)
        .backoff(WatchBackoff::new())
        .reflect(slices_writer));
    let mut sync = Syncer {
        proxy_name: config.proxy_name,
        service_cidrs: config.service_cidrs,
        tx,
        services,
        endpoint_slices,
        coalescer: Coalescer::new(config.min_sync_period, SETTLE),
        listed: [false; 2],
        synced: false,
        failing: [false; 2],
        table: None,
        errors: BTreeSet::new(),
        triggers: TriggerTimes::new(SystemTime::now()),
    };
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut probe: Option<tokio::task::JoinHandle<()>> = None;
    tracing::info!(
        proxy_name = %sync.proxy_name,
        service_cidrs = %sync.service_cidrs,
        "watching Services and EndpointSlices"
    );
    loop {
        let deadline = sync.coalescer.deadline();
        let wake = deadline.map_or_else(
            // Never reached: the branch is disabled without a deadline.
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            tokio::time::Instant::from_std,
        );
        let keep_going = tokio::select! {
            _ = &mut stop => false,
            Some(item) = service_events.next() => {
                sync.on_step(Resource::Services, Step::of(&item))
            }
            Some(item) = slice_events.next() => {
                sync.triggers.note(&item);
                sync.on_step(Resource::EndpointSlices, Step::of(&item))
            }
            () = tokio::time::sleep_until(wake), if deadline.is_some() => sync.on_due(),
            Some(()) = probe_rx.recv() => sync.probe_answered(),
        };
        if !keep_going {
            break;
        }
        match (&probe, sync.is_disconnected()) {
            (None, true) => {
                probe = Some(tokio::spawn(probe_until_reachable(
                    client.clone(),
                    probe_tx.clone(),
                )));
            }
            (Some(_), false) => {
                if let Some(task) = probe.take() {
                    task.abort();
                }
            }
            _ => {}
        }
    }
    if let Some(task) = probe {
        task.abort();
    }
    tracing::debug!("Kubernetes source stopped");
}

/// Lists one object of each resource until the API server answers both,
/// then says so once.
async fn probe_until_reachable(client: Client, reachable: tokio::sync::mpsc::Sender<()>) {
    let one = ListParams::default().limit(1);
    let services = Api::<Service>::all(client.clone());
    let slices = Api::<EndpointSlice>::all(client);
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let probe = async { services.list(&one).await.and(slices.list(&one).await) };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => {
                let _ = reachable.send(()).await;
                return;
            }
            Ok(Err(error)) => tracing::debug!(%error, "Kubernetes API probe failed"),
            Err(_) => tracing::debug!("Kubernetes API probe timed out"),
        }
    }
}

impl Syncer {
    fn is_disconnected(&self) -> bool {
        self.failing.iter().any(|&failing| failing)
    }

    /// Acts on one watcher item. False when the daemon is gone.
    fn on_step(&mut self, resource: Resource, step: Step) -> bool {
        if matches!(step, Step::Listing | Step::Listed | Step::Changed)
            && self.failing[resource as usize]
        {
            // This resource's requests work again.
            self.failing[resource as usize] = false;
            if !self.is_disconnected() && !self.announce_reconnected() {
                return false;
            }
        }
        match step {
            Step::Starting | Step::Listing => {}
            Step::Listed => {
                tracing::debug!(resource = resource.as_str(), "listed");
                self.listed[resource as usize] = true;
                self.changed();
            }
            Step::Changed => self.changed(),
            Step::Routine(error) => {
                tracing::debug!(resource = resource.as_str(), %error, "watch interrupted; resuming");
            }
            Step::Failed(error) => {
                let was_disconnected = self.is_disconnected();
                self.failing[resource as usize] = true;
                if !was_disconnected {
                    let error = format!("{}: {error}", resource.as_str());
                    tracing::warn!(%error,
                        "Kubernetes API unreachable; the last table stays while retrying");
                    return self.send(SourceEvent::Disconnected { error });
                }
                tracing::debug!(resource = resource.as_str(), %error, "still unreachable");
            }
        }
        true
    }

    fn changed(&mut self) {
        if self.listed.iter().all(|&listed| listed) {
            self.coalescer.changed(Instant::now());
        }
    }

    /// The probe got answers for every resource.
    fn probe_answered(&mut self) -> bool {
        if !self.is_disconnected() {
            return true;
        }
        self.failing = [false; 2];
        self.announce_reconnected()
    }

    fn announce_reconnected(&mut self) -> bool {
        tracing::info!("Kubernetes API reachable again");
        self.send(SourceEvent::Reconnected)
    }

    /// Builds and sends the table if the coalescer says it is time.
    fn on_due(&mut self) -> bool {
        if !self.coalescer.take_due(Instant::now()) {
            return true;
        }
        let started = Instant::now();
        let services = self.services.state();
        let slices = self.endpoint_slices.state();
        let (table, errors) = build_table(
            services.iter().map(Arc::as_ref),
            slices.iter().map(Arc::as_ref),
            &self.proxy_name,
            self.service_cidrs,
        );
        tracing::debug!(
            services = services.len(),
            endpoint_slices = slices.len(),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "table built"
        );
        // Changes that leave the table as it was are not programmed.
        let triggers = self.triggers.take();
        if self.table.as_deref() != Some(&table) {
            tracing::info!(
                services = table.services.len(),
                "Kubernetes state changed; new table"
            );
            let table = Arc::new(table);
            self.table = Some(Arc::clone(&table));
            if !self.send(SourceEvent::Table(table, triggers)) {
                return false;
            }
        }
        let errors: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        for error in errors.difference(&self.errors) {
            tracing::warn!(%error, "object left out of the table");
            if !self.send(SourceEvent::Invalid {
                error: error.clone(),
            }) {
                return false;
            }
        }
        if errors.is_empty() && !self.errors.is_empty() && !self.send(SourceEvent::Valid) {
            return false;
        }
        self.errors = errors;
        if !self.synced {
            self.synced = true;
            tracing::info!("initial sync with the Kubernetes API done");
            return self.send(SourceEvent::Synced);
        }
        true
    }

    fn send(&self, event: SourceEvent) -> bool {
        self.tx.send(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cidr() -> ServiceCidrs {
        ServiceCidrs::v4_only("198.18.100.0/24".parse().expect("valid"))
    }

    fn service(name: &str, ip: Option<&str>, proxy: Option<&str>) -> Service {
        let mut labels = serde_json::Map::new();
        if let Some(proxy) = proxy {
            labels.insert(SERVICE_PROXY_NAME_LABEL.into(), proxy.into());
        }
        let mut spec = json!({"ports": [{"port": 80}]});
        if let Some(ip) = ip {
            spec["clusterIP"] = ip.into();
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": name, "labels": labels},
            "spec": spec,
        }))
        .expect("valid Service")
    }

    #[test]
    fn proxy_name_label_rule() {
        assert!(is_selected(
            &service("plain", Some("198.18.100.1"), None),
            "cipgw"
        ));
        assert!(is_selected(
            &service("ours", Some("198.18.100.2"), Some("cipgw")),
            "cipgw"
        ));
        assert!(!is_selected(
            &service("theirs", Some("198.18.100.3"), Some("other")),
            "cipgw"
        ));
        assert!(is_selected(
            &service("theirs", Some("198.18.100.3"), Some("other")),
            "other"
        ));
    }

    #[test]
    fn services_without_cluster_ip_are_skipped_not_allocated() {
        assert!(!is_selected(&service("pending", None, None), "cipgw"));
        assert!(!is_selected(&service("empty", Some(""), None), "cipgw"));
        assert!(is_selected(
            &service("headless", Some("None"), None),
            "cipgw"
        ));
        let external: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.invalid"},
        }))
        .expect("valid");
        assert!(is_selected(&external, "cipgw"));

        let services = [
            service("a", Some("198.18.100.1"), None),
            service("pending", None, None),
            service("theirs", Some("198.18.100.3"), Some("other")),
            service("bad", Some("198.19.0.1"), None),
        ];
        let (table, errors) = build_table(&services, [], "cipgw", cidr());
        let names: Vec<_> = table.services.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["default/a"]);
        let errors: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            ["Service default/bad: spec.clusterIP: 198.19.0.1 is outside the service CIDR 198.18.100.0/24"]
        );
    }

    fn slice_at(name: &str, service: &str, trigger: Option<&str>) -> EndpointSlice {
        let mut annotations = serde_json::Map::new();
        if let Some(trigger) = trigger {
            annotations.insert(LAST_CHANGE_TRIGGER_TIME.into(), trigger.into());
        }
        serde_json::from_value(json!({
            "metadata": {
                "namespace": "default", "name": name, "annotations": annotations,
                "labels": {SERVICE_NAME_LABEL: service},
            },
            "addressType": "IPv4", "endpoints": [],
        }))
        .expect("valid EndpointSlice")
    }

    fn at(rfc3339: &str) -> SystemTime {
        trigger_time(&slice_at("x", "x", Some(rfc3339))).expect("parses")
    }

    /// kube-proxy's rules: one time per slice write that changed the
    /// annotation, none from before the start, none when missing or
    /// unparsable, a deletion drops its Service's pending times.
    #[test]
    fn trigger_times_follow_kube_proxy() {
        let apply = |slice| Ok(watcher::Event::Apply(slice));
        let mut triggers = TriggerTimes::new(at("2026-01-01T00:00:00Z"));
        // Before the start (an old slice of the first list): no sample.
        triggers.note(&Ok(watcher::Event::InitApply(slice_at(
            "a-1",
            "a",
            Some("2025-12-31T23:59:59Z"),
        ))));
        assert!(triggers.take().is_empty());
        // Two slices of two Services written: both times, to the ns.
        triggers.note(&apply(slice_at("a-1", "a", Some("2026-01-01T00:00:01.5Z"))));
        triggers.note(&apply(slice_at(
            "b-1",
            "b",
            Some("2026-01-01T00:00:02.000000001Z"),
        )));
        // The same annotation again (a relist, a status-only write): none.
        triggers.note(&Ok(watcher::Event::InitApply(slice_at(
            "a-1",
            "a",
            Some("2026-01-01T00:00:01.5Z"),
        ))));
        let mut times = triggers.take();
        times.sort();
        assert_eq!(
            times,
            [
                at("2026-01-01T00:00:01.5Z"),
                SystemTime::UNIX_EPOCH + Duration::new(1_767_225_602, 1)
            ]
        );
        assert!(triggers.take().is_empty(), "taken once");
        // Missing or unparsable: no sample.
        triggers.note(&apply(slice_at("c-1", "c", None)));
        triggers.note(&apply(slice_at("c-2", "c", Some("yesterday"))));
        assert!(triggers.take().is_empty());
        // A deletion drops the Service's pending times.
        triggers.note(&apply(slice_at("a-1", "a", Some("2026-01-01T00:00:03Z"))));
        triggers.note(&Ok(watcher::Event::Delete(slice_at(
            "a-1",
            "a",
            Some("2026-01-01T00:00:03Z"),
        ))));
        assert!(triggers.take().is_empty());
    }

    #[test]
    fn bad_kubeconfig_fails_at_spawn() {
        let mut config = KubeSourceConfig::new(cidr());
        config.kubeconfig = Some("/nonexistent/cipgw-kubeconfig".into());
        let (tx, _rx) = crate::source::channel();
        let error = spawn_kube_source(config, tx).expect_err("no such file");
        assert!(
            error
                .to_string()
                .starts_with("cannot read kubeconfig /nonexistent/cipgw-kubeconfig"),
            "{error}"
        );
    }

    /// An https API server (in-cluster's kind) gets a rustls client
    /// without any system TLS library or crypto provider set up by hand.
    #[test]
    fn https_client_builds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n\
             contexts: [{name: c, context: {cluster: c, user: u}}]\n\
             users: [{name: u, user: {token: t}}]\n",
        )
        .expect("write");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(client(Some(&path)))
            .expect("client builds");
    }
}

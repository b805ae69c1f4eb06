//! The connection table's defaults that both the daemon settings and the
//! data path's conntrack read: the idle timeout of each flow state and the
//! flood guard's share.
//!
//! They are defined here, once, because cipgw-config is the one crate both
//! sides depend on: the settings ([`crate::settings`], which `cipgw run`
//! fills from its flags) hold a [`Timeouts`], and cipgw-datapath's
//! conntrack takes the same value as it is (its `conntrack::Timeouts` is
//! this type). The data path builds this crate without the `files`
//! feature, so this module is std only and outside that feature; the data
//! path cannot host the type itself, as it depends on this crate.

use std::time::Duration;

/// Idle timeouts per flow state: how long a flow in that state is kept
/// without a packet either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow whose SYN got no answer yet.
    pub tcp_syn_sent: Duration,
    pub tcp_established: Duration,
    /// After a FIN one way.
    pub tcp_fin_wait: Duration,
    /// After a FIN one way was followed by a packet the other way.
    pub tcp_close_wait: Duration,
    /// After FINs both ways.
    pub tcp_time_wait: Duration,
    /// After an RST either way.
    pub tcp_close: Duration,
    /// A UDP flow without a reply.
    pub udp_unreplied: Duration,
    /// A UDP flow that got a reply.
    pub udp_replied: Duration,
}

impl Default for Timeouts {
    /// kube-proxy's nf_conntrack settings (established 24 h, close-wait
    /// 1 h) and Linux's defaults for the rest.
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(3600),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(120),
        }
    }
}

/// Default share of the table (percent) flows without a reply may hold
/// (the flood guard).
pub const DEFAULT_UNREPLIED_PERCENT: u8 = 50;

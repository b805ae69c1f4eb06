//! The query string of a request: percent-decoded pairs, and the
//! parameters `/api/conntrack` takes (filters and paging), checked so
//! that a bad one is answered with 400 and says what was expected.

use std::net::{IpAddr, SocketAddr};

use cipgw_config::Protocol;

use crate::conntrack::FlowKey;
use crate::family::IpFamily;

use super::{DEFAULT_LIMIT, MAX_LIMIT};

/// An address filter: `IP` or `IP:PORT` (`[IPv6]:PORT`), either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrFilter {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl AddrFilter {
    fn parse(param: &str, value: &str) -> Result<Self, String> {
        if let Ok(ip) = value.parse::<IpAddr>() {
            return Ok(Self { ip, port: None });
        }
        match value.parse::<SocketAddr>() {
            Ok(sa) => Ok(Self {
                ip: sa.ip(),
                port: Some(sa.port()),
            }),
            Err(_) => Err(format!(
                "{param}={value:?}: expected an address or address:port ([IPv6]:port)"
            )),
        }
    }

    pub(super) fn matches(&self, addr: SocketAddr) -> bool {
        addr.ip() == self.ip && self.port.map_or(true, |p| p == addr.port())
    }
}

/// What `/api/conntrack` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackQuery {
    pub vip: Option<AddrFilter>,
    pub client: Option<AddrFilter>,
    pub backend: Option<AddrFilter>,
    pub protocol: Option<Protocol>,
    /// Only flows given this source NAT port.
    pub snat_port: Option<u16>,
    pub limit: usize,
    pub offset: usize,
}

impl Default for ConntrackQuery {
    fn default() -> Self {
        Self {
            vip: None,
            client: None,
            backend: None,
            protocol: None,
            snat_port: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

impl ConntrackQuery {
    /// Parses a query string (without the `?`).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut q = ConntrackQuery::default();
        for (name, value) in query_pairs(query)? {
            match name.as_str() {
                "vip" => q.vip = Some(AddrFilter::parse("vip", &value)?),
                "client" => q.client = Some(AddrFilter::parse("client", &value)?),
                "backend" => q.backend = Some(AddrFilter::parse("backend", &value)?),
                "protocol" => {
                    q.protocol = Some(match value.to_ascii_lowercase().as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return Err(format!("protocol={value:?}: expected tcp or udp")),
                    })
                }
                "snat_port" => {
                    q.snat_port = Some(value.parse::<u16>().map_err(|_| {
                        format!("snat_port={value:?}: expected a port number")
                    })?)
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| *l <= MAX_LIMIT)
                        .ok_or_else(|| {
                            format!("limit={value:?}: expected a number from 0 to {MAX_LIMIT}")
                        })?
                }
                "offset" => {
                    q.offset = value
                        .parse::<usize>()
                        .map_err(|_| format!("offset={value:?}: expected a number"))?
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {name:?} (known: vip, client, backend, protocol, snat_port, limit, offset)"
                    ))
                }
            }
        }
        Ok(q)
    }
}

impl ConntrackQuery {
    /// Parses the query of `DELETE /api/conntrack`: the filters of
    /// [`ConntrackQuery::parse`] but no paging and no `snat_port`, and
    /// they must name one flow (`protocol`, `client` and `vip`, each
    /// with its port) or a backend (`backend`, with or without its port;
    /// the other filters narrow it), so that a forgotten filter cannot
    /// empty the table.
    pub fn parse_delete(query: &str) -> Result<Self, String> {
        for (name, _) in query_pairs(query)? {
            if matches!(name.as_str(), "limit" | "offset" | "snat_port") {
                return Err(format!(
                    "{name} does not select flows to delete (known: protocol, client, vip, backend)"
                ));
            }
        }
        let q = Self::parse(query)?;
        let one_flow = q.protocol.is_some()
            && q.client.is_some_and(|c| c.port.is_some())
            && q.vip.is_some_and(|v| v.port.is_some());
        if !one_flow && q.backend.is_none() {
            return Err(
                "deleting flows needs one flow's protocol, client=IP:PORT and \
                 vip=IP:PORT, or backend=IP[:PORT]"
                    .into(),
            );
        }
        Ok(q)
    }

    /// Whether the flow with forward key `key` (client to VIP) and
    /// `backend` matches the filters (`snat_port` aside).
    pub(super) fn selects<A: IpFamily>(&self, key: &FlowKey<A>, backend: (A, u16)) -> bool {
        let addr = |ip: A, port| SocketAddr::new(ip.into(), port);
        self.vip
            .map_or(true, |f| f.matches(addr(key.dst, key.dst_port)))
            && self
                .client
                .map_or(true, |f| f.matches(addr(key.src, key.src_port)))
            && self
                .backend
                .map_or(true, |f| f.matches(addr(backend.0, backend.1)))
            && self.protocol.map_or(true, |p| p == key.protocol)
    }
}

/// `a=1&b=x%3A2` as decoded pairs.
pub(super) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

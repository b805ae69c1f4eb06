//! The query string of a request: percent-decoded pairs, and the
//! parameters `/api/conntrack` takes (filters and paging), checked so
//! that a bad one is answered with 400 and says what was expected.

use std::net::{Ipv4Addr, SocketAddrV4};

use cipgw_config::Protocol;

use super::{DEFAULT_LIMIT, MAX_LIMIT};

/// An address filter: `IP` or `IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrFilter {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
}

impl AddrFilter {
    fn parse(param: &str, value: &str) -> Result<Self, String> {
        if let Ok(ip) = value.parse::<Ipv4Addr>() {
            return Ok(Self { ip, port: None });
        }
        match value.parse::<SocketAddrV4>() {
            Ok(sa) => Ok(Self {
                ip: *sa.ip(),
                port: Some(sa.port()),
            }),
            Err(_) => Err(format!(
                "{param}={value:?}: expected an IPv4 address or address:port"
            )),
        }
    }

    pub(super) fn matches(&self, addr: SocketAddrV4) -> bool {
        *addr.ip() == self.ip && self.port.map_or(true, |p| p == addr.port())
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

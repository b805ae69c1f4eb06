//! A flow's state and how packets move it: the state machine behind the
//! lifecycle table in the [module doc](super), the flag bits kept beside
//! the state in a record's state byte, and each state's idle timeout.
//!
//! The state byte is what a record stores ([`super::slab`]); its layout
//! (state in the low three bits, then [`ASSURED`], the FIN bits,
//! [`REPLIED`] and [`AFFINITY`]) is part of the table file's format
//! ([`super::persist`]), so it never changes meaning.

use cipgw_config::Protocol;

use super::Direction;
use crate::wire::tcp::flags as tcp_flags;

/// Idle timeouts per state, defined in cipgw-config so that the daemon
/// settings hold the very type the table reads.
pub use cipgw_config::conntrack::Timeouts;

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    TcpSynSent = 0,
    TcpEstablished = 1,
    TcpFinWait = 2,
    TcpCloseWait = 3,
    TcpTimeWait = 4,
    TcpClose = 5,
    UdpUnreplied = 6,
    UdpReplied = 7,
}

impl FlowState {
    pub const ALL: [FlowState; 8] = [
        FlowState::TcpSynSent,
        FlowState::TcpEstablished,
        FlowState::TcpFinWait,
        FlowState::TcpCloseWait,
        FlowState::TcpTimeWait,
        FlowState::TcpClose,
        FlowState::UdpUnreplied,
        FlowState::UdpReplied,
    ];

    /// The label used in metrics and listings.
    pub const fn name(self) -> &'static str {
        match self {
            FlowState::TcpSynSent => "tcp_syn_sent",
            FlowState::TcpEstablished => "tcp_established",
            FlowState::TcpFinWait => "tcp_fin_wait",
            FlowState::TcpCloseWait => "tcp_close_wait",
            FlowState::TcpTimeWait => "tcp_time_wait",
            FlowState::TcpClose => "tcp_close",
            FlowState::UdpUnreplied => "udp_unreplied",
            FlowState::UdpReplied => "udp_replied",
        }
    }

    /// FIN_WAIT, CLOSE_WAIT, TIME_WAIT, CLOSE: the connection is ending,
    /// so under a full table it may make way for a new one.
    pub const fn is_closing(self) -> bool {
        matches!(
            self,
            FlowState::TcpFinWait
                | FlowState::TcpCloseWait
                | FlowState::TcpTimeWait
                | FlowState::TcpClose
        )
    }

    /// TIME_WAIT or CLOSE: a new SYN on the same 5-tuple replaces the
    /// flow.
    pub const fn is_finished(self) -> bool {
        matches!(self, FlowState::TcpTimeWait | FlowState::TcpClose)
    }

    /// This state's idle timeout in `timeouts`, in whole seconds (the
    /// conntrack clock's unit).
    #[inline]
    pub fn timeout(self, timeouts: &Timeouts) -> u32 {
        let d = match self {
            FlowState::TcpSynSent => timeouts.tcp_syn_sent,
            FlowState::TcpEstablished => timeouts.tcp_established,
            FlowState::TcpFinWait => timeouts.tcp_fin_wait,
            FlowState::TcpCloseWait => timeouts.tcp_close_wait,
            FlowState::TcpTimeWait => timeouts.tcp_time_wait,
            FlowState::TcpClose => timeouts.tcp_close,
            FlowState::UdpUnreplied => timeouts.udp_unreplied,
            FlowState::UdpReplied => timeouts.udp_replied,
        };
        u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
    }

    /// The state a flow of this state's protocol starts in.
    pub(super) const fn initial_of_protocol(self) -> FlowState {
        match self {
            FlowState::UdpUnreplied | FlowState::UdpReplied => FlowState::UdpUnreplied,
            _ => FlowState::TcpSynSent,
        }
    }

    /// The state a new flow starts in.
    pub const fn initial(protocol: Protocol) -> FlowState {
        match protocol {
            Protocol::Tcp => FlowState::TcpSynSent,
            Protocol::Udp => FlowState::UdpUnreplied,
        }
    }

    #[inline]
    pub(super) const fn from_bits(bits: u8) -> FlowState {
        match bits & STATE_MASK {
            0 => FlowState::TcpSynSent,
            1 => FlowState::TcpEstablished,
            2 => FlowState::TcpFinWait,
            3 => FlowState::TcpCloseWait,
            4 => FlowState::TcpTimeWait,
            5 => FlowState::TcpClose,
            6 => FlowState::UdpUnreplied,
            _ => FlowState::UdpReplied,
        }
    }
}

/// State byte layout: the state in the low bits, then flags.
pub(super) const STATE_MASK: u8 = 0x07;
/// The flow is assured (Linux's IPS_ASSURED): TCP saw the client's ACK
/// after the backend's SYN-ACK, UDP saw a packet after the first reply.
/// An assured flow that is not closing is never evicted.
pub(super) const ASSURED: u8 = 0x08;
/// A FIN was seen client -> backend.
pub(super) const FIN_FORWARD: u8 = 0x10;
/// A FIN was seen backend -> client.
pub(super) const FIN_REPLY: u8 = 0x20;
/// A packet was seen backend -> client.
pub(super) const REPLIED: u8 = 0x40;
/// The flow's Service has session affinity.
pub(super) const AFFINITY: u8 = 0x80;

/// Whether a packet with `flags` travelling `direction` leaves a flow in
/// state `bits` as it is: the states a flow spends its life in (an open
/// TCP connection that no FIN or RST closes, a replied UDP stream, a
/// one-way UDP stream's forward packets). For these, the lookup skips
/// [`next_state`]'s full machine (a tenth of a cached lookup's
/// instructions). Never true for a finished flow, whose new SYN
/// replaces it (tested against [`next_state`] for every input).
#[inline(always)]
pub(super) fn keeps_state(bits: u8, direction: Direction, protocol: Protocol, flags: u8) -> bool {
    const TCP_OPEN: u8 = FlowState::TcpEstablished as u8 | ASSURED | REPLIED;
    const UDP_STREAM: u8 = FlowState::UdpReplied as u8 | ASSURED | REPLIED;
    const UDP_ONE_WAY: u8 = FlowState::UdpUnreplied as u8;
    match bits & !AFFINITY {
        TCP_OPEN => protocol == Protocol::Tcp && flags & (tcp_flags::FIN | tcp_flags::RST) == 0,
        UDP_STREAM => protocol == Protocol::Udp,
        UDP_ONE_WAY => protocol == Protocol::Udp && direction == Direction::Forward,
        _ => false,
    }
}

/// The state bits after a packet with `flags` travelling `direction`.
/// (A new SYN on a finished flow never gets here: [`super::Conntrack::touch`]
/// replaces the flow.)
#[inline]
pub(super) fn next_state(bits: u8, direction: Direction, protocol: Protocol, flags: u8) -> u8 {
    let state = FlowState::from_bits(bits);
    let mut flag_bits = bits & !STATE_MASK;
    let replied_before = flag_bits & REPLIED != 0;
    if direction == Direction::Reply {
        flag_bits |= REPLIED;
    }
    let next = match protocol {
        Protocol::Udp => {
            // A stream: a packet either way after the first reply.
            if replied_before {
                flag_bits |= ASSURED;
            }
            if flag_bits & REPLIED != 0 {
                FlowState::UdpReplied
            } else {
                FlowState::UdpUnreplied
            }
        }
        Protocol::Tcp => {
            // The client's ACK after the backend's SYN-ACK completes the
            // handshake (the SYN-ACK alone does not).
            if replied_before
                && direction == Direction::Forward
                && flags & (tcp_flags::ACK | tcp_flags::SYN | tcp_flags::RST) == tcp_flags::ACK
            {
                flag_bits |= ASSURED;
            }
            if flags & tcp_flags::RST != 0 {
                FlowState::TcpClose
            } else {
                if flags & tcp_flags::FIN != 0 {
                    flag_bits |= match direction {
                        Direction::Forward => FIN_FORWARD,
                        Direction::Reply => FIN_REPLY,
                    };
                }
                let fins = flag_bits & (FIN_FORWARD | FIN_REPLY);
                if state == FlowState::TcpClose {
                    FlowState::TcpClose
                } else if fins == FIN_FORWARD | FIN_REPLY {
                    FlowState::TcpTimeWait
                } else if fins != 0 {
                    // One side closed; a packet from the other side that
                    // is not its own FIN means it stays open.
                    let other_side_spoke = match direction {
                        Direction::Forward => fins == FIN_REPLY,
                        Direction::Reply => fins == FIN_FORWARD,
                    };
                    if other_side_spoke || state == FlowState::TcpCloseWait {
                        FlowState::TcpCloseWait
                    } else {
                        FlowState::TcpFinWait
                    }
                } else if flag_bits & REPLIED != 0 {
                    FlowState::TcpEstablished
                } else {
                    FlowState::TcpSynSent
                }
            }
        }
    };
    flag_bits | next as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `keeps_state` is a shortcut past `next_state`: wherever it says a
    /// packet changes nothing, `next_state` must agree, and a finished
    /// flow (whose new SYN replaces it) must never be kept. Every state
    /// byte, direction, protocol and flag byte.
    #[test]
    fn keeps_state_only_where_next_state_keeps_the_bits() {
        let mut kept = 0;
        for bits in 0..=u8::MAX {
            for direction in [Direction::Forward, Direction::Reply] {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    for flags in 0..=u8::MAX {
                        if !keeps_state(bits, direction, protocol, flags) {
                            continue;
                        }
                        kept += 1;
                        assert_eq!(
                            next_state(bits, direction, protocol, flags),
                            bits,
                            "kept {bits:#04x} {direction:?} {protocol:?} flags {flags:#04x}"
                        );
                        assert!(
                            !FlowState::from_bits(bits).is_finished(),
                            "a finished flow kept: {bits:#04x}"
                        );
                    }
                }
            }
        }
        // The states a flow lives in are all covered, both ways where
        // both ways keep them, with or without affinity.
        let open = FlowState::TcpEstablished as u8 | ASSURED | REPLIED;
        let stream = FlowState::UdpReplied as u8 | ASSURED | REPLIED;
        let one_way = FlowState::UdpUnreplied as u8;
        for bits in [open, open | AFFINITY] {
            for direction in [Direction::Forward, Direction::Reply] {
                for flags in [0, tcp_flags::ACK, tcp_flags::ACK | tcp_flags::PSH] {
                    assert!(keeps_state(bits, direction, Protocol::Tcp, flags));
                }
            }
        }
        for bits in [stream, stream | AFFINITY] {
            assert!(keeps_state(bits, Direction::Forward, Protocol::Udp, 0));
            assert!(keeps_state(bits, Direction::Reply, Protocol::Udp, 0));
        }
        assert!(keeps_state(one_way, Direction::Forward, Protocol::Udp, 0));
        assert!(!keeps_state(one_way, Direction::Reply, Protocol::Udp, 0));
        assert!(kept > 0);
    }
}

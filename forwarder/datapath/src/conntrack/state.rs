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

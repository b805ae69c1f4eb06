//! Zero-copy views over packet bytes, one file per protocol.
//!
//! Each view wraps `T: AsRef<[u8]>`; setters exist only where
//! `T: AsMut<[u8]>`. A view is built with `new_checked`, which verifies
//! every length the accessors rely on, so that no accessor of a checked
//! view can panic or read out of bounds, whatever the bytes came off the
//! wire as. Field offsets are named byte ranges; nothing casts packet
//! bytes to `#[repr(C)]` structs (unaligned access is undefined
//! behaviour). The headers the gateway writes for its own answers are
//! emitted from a `Repr` (smoltcp's pattern): a plain value of the
//! fields, written with its checksum by `emit`.
//!
//! [`frame::Frame`] parses a whole frame once and hands out the views of
//! its headers without checking them again.

pub mod ethernet;
pub mod frame;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

/// IANA protocol numbers (RFC 790) of the transports cipgw reads.
pub mod ip_number {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Why a header could not be viewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the fixed header needs.
    Truncated,
    /// A length or version field contradicts the bytes present.
    Malformed,
}

/// Reads a big-endian u16 at `at`; callers guarantee `at + 2 <= len`.
#[inline(always)]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Writes a big-endian u16 at `at`; callers guarantee `at + 2 <= len`.
#[inline(always)]
pub(crate) fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Reads `N` bytes at `at` as they lie (a field that is only copied or
/// given to [`crate::checksum::WireDelta`]); callers guarantee
/// `at + N <= len`.
#[inline(always)]
pub(crate) fn read_bytes<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut bytes = [0; N];
    bytes.copy_from_slice(&buf[at..at + N]);
    bytes
}

/// Writes `bytes` at `at` as they are; callers guarantee
/// `at + N <= len`.
#[inline(always)]
pub(crate) fn write_bytes<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) {
    buf[at..at + N].copy_from_slice(&bytes);
}

/// Reads a big-endian u32 at `at`; callers guarantee `at + 4 <= len`.
#[inline(always)]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Writes a big-endian u32 at `at`; callers guarantee `at + 4 <= len`.
#[inline(always)]
pub(crate) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

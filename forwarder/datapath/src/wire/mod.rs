//! Zero-copy views over packet bytes, one file per protocol.
//!
//! Each view wraps `T: AsRef<[u8]>`; setters exist only where
//! `T: AsMut<[u8]>`. A view is built with `new_checked`, which verifies
//! every length the accessors rely on, so that no accessor of a checked
//! view can panic or read out of bounds, whatever the bytes came off the
//! wire as. Field offsets are named byte ranges; nothing casts packet
//! bytes to `#[repr(C)]` structs (unaligned access is undefined
//! behaviour).

pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

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

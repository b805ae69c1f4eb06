//! Internet checksums (RFC 1071) and their incremental update (RFC 1624).
//!
//! The rewrite path never recomputes a checksum over a whole packet: it
//! folds the difference between old and new field values into the stored
//! checksum, `HC' = ~(~HC + ~m + m')` (RFC 1624, eqn. 3), which is correct
//! for every input including the one's-complement corner cases that
//! RFC 1141's form got wrong.
//!
//! The packet path folds a flow's delta once ([`Delta::on_wire`]) and
//! applies it to each packet's checksum field as the field lies in
//! memory ([`WireDelta`]), with no byte swap: a worker's flow cache
//! keeps the folded deltas of the flows it serves.

/// Adds 16-bit words to a 32-bit one's-complement accumulator.
#[inline(always)]
fn add_words(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds carries into 16 bits: the two halves added with their carry
/// brought back in at the bottom (which cannot carry again), so the value
/// stays the same modulo 0xffff and a non-zero value stays non-zero, as
/// the one's-complement sum needs. Branch-free: the loop it replaced took
/// a compare and a branch per step.
#[inline(always)]
fn fold(acc: u32) -> u16 {
    let (sum, carry) = (acc as u16).overflowing_add((acc >> 16) as u16);
    sum + u16::from(carry)
}

/// Folds a delta's carries into 16 bits, through 32 as [`fold`] does
/// (0xffff divides 0xffff_ffff, so each step keeps the value modulo
/// 0xffff).
#[inline(always)]
fn fold64(acc: u64) -> u16 {
    let (sum, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    fold(sum + u32::from(carry))
}

/// The one's-complement sum of two 64-bit words: their sum with its
/// carry added back at the bottom (which cannot carry again: a carry
/// leaves at most 2^64 - 2).
#[inline(always)]
fn add_carried(a: u64, b: u64) -> u64 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u64::from(carry)
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add_words(0, data))
}

/// The TCP/UDP checksum over the IPv4 pseudo-header and `segment`
/// (RFC 9293 section 3.1, RFC 768).
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let mut acc = add_words(0, &src);
    acc = add_words(acc, &dst);
    acc += u32::from(protocol);
    // Segment lengths come from a 16-bit IPv4 total length.
    acc += segment.len() as u32;
    !fold(add_words(acc, segment))
}

/// The TCP/UDP/ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200
/// section 8.1: source, destination, upper-layer length as 32 bits, three
/// zero bytes and the next header) and `segment`.
pub fn l4_checksum_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, segment: &[u8]) -> u16 {
    let mut acc = add_words(0, &src);
    acc = add_words(acc, &dst);
    // Upper-layer lengths beyond 16 bits need jumbograms, which cipgw
    // does not parse; the two halves are summed as RFC 8200 words.
    let len = segment.len() as u32;
    acc += (len >> 16) + (len & 0xffff);
    acc += u32::from(next_header);
    !fold(add_words(acc, segment))
}

/// A pending checksum difference: old words removed, new words added.
///
/// Collect every changed 16-bit word of a packet once, then apply the
/// same delta to each checksum that covers those words (the IPv4 header
/// checksum covers the addresses; the TCP/UDP checksum covers addresses
/// through the pseudo-header and the ports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// Records that a 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word(self, old: u16, new: u16) -> Self {
        Delta(self.0 + u64::from(!old) + u64::from(new))
    }

    /// Records that a 32-bit field changed: one sum for its two 16-bit
    /// words, as `hi << 16 | lo` is `hi + lo` modulo 0xffff, and the
    /// complement of the field is that of each word.
    #[inline(always)]
    fn word32(self, old: [u8; 4], new: [u8; 4]) -> Self {
        Delta(self.0 + u64::from(!u32::from_be_bytes(old)) + u64::from(u32::from_be_bytes(new)))
    }

    /// Records that a 32-bit field (an IPv4 address) changed.
    #[inline(always)]
    pub fn addr(self, old: [u8; 4], new: [u8; 4]) -> Self {
        self.word32(old, new)
    }

    /// Records that a 128-bit field (an IPv6 address) changed.
    ///
    /// The four 64-bit halves (the old ones complemented) are added with
    /// their carries brought back in, as they lie in memory, and folded
    /// to 16 bits; that sum is byte-swapped once to big-endian order.
    /// The one's-complement sum of byte-swapped words is the byte-swapped
    /// sum (RFC 1071 section 2(B)), so this is the same delta as adding
    /// the eight big-endian words, without swapping each half first.
    /// Read 8 bytes at a time: the packet path keeps the address in
    /// those pieces, and stores it to the stack in them for the next-hop
    /// cache, which reads it back 8 bytes at a time; read as 32-bit
    /// words, each of those loads spanned two stores and stalled
    /// (benches/RESULTS.md, session 21).
    #[inline(always)]
    pub fn addr6(self, old: [u8; 16], new: [u8; 16]) -> Self {
        let half = |bytes: &[u8; 16], at: usize| {
            let mut half = [0; 8];
            half.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(half)
        };
        let removed = add_carried(!half(&old, 0), !half(&old, 8));
        let added = add_carried(half(&new, 0), half(&new, 8));
        let native = fold64(add_carried(removed, added));
        Delta(self.0 + u64::from(u16::from_be(native)))
    }

    /// Records an IPv4 TTL's decrement by one, from any TTL of 1 or
    /// more. The TTL's 16-bit word (TTL, protocol) goes from `w` to
    /// `w - 0x100`, so `~w + (w - 0x100)` is 0xfeff whatever `w` is: a
    /// flow's header delta, made once, holds for each of its packets.
    #[inline(always)]
    pub fn ttl_decrement(self) -> Self {
        Delta(self.0 + 0xfeff)
    }

    /// The delta folded to 16 bits, as a checksum field holds it in
    /// memory ([`WireDelta`]).
    #[inline(always)]
    pub fn on_wire(self) -> WireDelta {
        // The folded sum of big-endian words, byte-swapped on a
        // little-endian CPU (nothing on a big-endian one).
        WireDelta(u16::from_be(fold64(self.0)))
    }

    /// Applies the delta to a stored checksum (RFC 1624, eqn. 3).
    #[inline(always)]
    pub fn apply(self, checksum: u16) -> u16 {
        !fold(u32::from(!checksum) + u32::from(fold64(self.0)))
    }

    /// Applies the delta to a UDP checksum: zero means "no checksum" and
    /// stays zero, and a computed zero is sent as all ones (RFC 768).
    #[inline(always)]
    pub fn apply_udp(self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// A [`Delta`] folded to 16 bits and laid out as a checksum field's two
/// bytes lie in memory, so that it applies to the field as loaded
/// (`u16::from_ne_bytes`) and the result is stored as is: no byte swap
/// either way. The one's-complement sum of byte-swapped words is the
/// byte-swapped sum (RFC 1071 section 2(B)): one's-complement addition
/// carries around a 16-bit ring, which a byte swap rotates by eight.
/// What a flow's rewrite keeps, made once per flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireDelta(u16);

impl WireDelta {
    /// Applies the delta to a checksum field's bytes (RFC 1624, eqn. 3).
    #[inline(always)]
    pub fn apply(self, checksum: [u8; 2]) -> [u8; 2] {
        let stored = u16::from_ne_bytes(checksum);
        (!fold(u32::from(!stored) + u32::from(self.0))).to_ne_bytes()
    }

    /// Applies the delta to a UDP checksum field: zero means "no
    /// checksum" and stays zero, and a computed zero is sent as all ones
    /// (RFC 768). Both are the same in either byte order.
    #[inline(always)]
    pub fn apply_udp(self, checksum: [u8; 2]) -> [u8; 2] {
        if checksum == [0, 0] {
            return checksum;
        }
        match self.apply(checksum) {
            [0, 0] => [0xff, 0xff],
            c => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn verifies_to_zero() {
        let mut header = [
            0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 18, 0, 2,
            198, 18, 100, 10,
        ];
        let c = checksum(&header);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&header), 0);
    }

    #[test]
    fn udp_zero_stays_zero() {
        let delta = Delta::default().word(1, 2);
        assert_eq!(delta.apply_udp(0), 0);
    }

    /// Address deltas summed as 32-bit words equal the same change
    /// recorded word by word, at the one's-complement corners too (all
    /// ones to zero, zero to all ones, unchanged).
    #[test]
    fn address_deltas_equal_word_by_word() {
        let by_words = |old: &[u8], new: &[u8]| {
            old.chunks(2)
                .zip(new.chunks(2))
                .fold(Delta::default(), |d, (o, n)| {
                    d.word(
                        u16::from_be_bytes([o[0], o[1]]),
                        u16::from_be_bytes([n[0], n[1]]),
                    )
                })
        };
        let corners: [([u8; 16], [u8; 16]); 4] = [
            ([0xff; 16], [0; 16]),
            ([0; 16], [0xff; 16]),
            ([0x12; 16], [0x12; 16]),
            ([0; 16], [0; 16]),
        ];
        for (old, new) in corners {
            for checksum in [0u16, 1, 0x7fff, 0xfffe, 0xffff] {
                assert_eq!(
                    Delta::default().addr6(old, new).apply(checksum),
                    by_words(&old, &new).apply(checksum),
                    "IPv6 {old:x?} -> {new:x?} over checksum {checksum:#x}"
                );
                let (old4, new4) = (
                    [old[0], old[1], old[2], old[3]],
                    [new[0], new[1], new[2], new[3]],
                );
                assert_eq!(
                    Delta::default().addr(old4, new4).apply(checksum),
                    by_words(&old4, &new4).apply(checksum),
                    "IPv4 {old4:x?} -> {new4:x?} over checksum {checksum:#x}"
                );
            }
        }
    }

    /// RFC 1071's fold: add the carries back in until none is left.
    fn fold_by_steps(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The branch-free folds give what folding step by step gives, at the
    /// corners (0, all ones, a lone carry) too.
    #[test]
    fn folds_equal_folding_step_by_step() {
        for acc in [
            0u64,
            1,
            0xfffe,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            0x1_0000_0000,
        ] {
            assert_eq!(fold64(acc), fold_by_steps(acc), "{acc:#x}");
            if let Ok(acc32) = u32::try_from(acc) {
                assert_eq!(fold(acc32), fold_by_steps(acc), "{acc:#x}");
            }
        }
        assert_eq!(fold64(u64::MAX), fold_by_steps(u64::MAX));
    }

    /// The TTL's constant delta is the TTL word's own, for every TTL
    /// that may be decremented and every protocol.
    #[test]
    fn ttl_decrement_is_the_ttl_words_delta() {
        for ttl in 1..=u8::MAX {
            for protocol in [0u8, 6, 17, 58, 0xff] {
                let old = u16::from_be_bytes([ttl, protocol]);
                let new = u16::from_be_bytes([ttl - 1, protocol]);
                for checksum in [0u16, 1, 0x00ff, 0x7fff, 0xfeff, 0xfffe, 0xffff] {
                    assert_eq!(
                        Delta::default().ttl_decrement().apply(checksum),
                        Delta::default().word(old, new).apply(checksum),
                        "TTL {ttl}, protocol {protocol}, checksum {checksum:#x}"
                    );
                }
            }
        }
    }

    proptest! {
        /// A delta applied to a checksum field's bytes as they lie in
        /// memory gives the bytes of the checksum it gives applied to the
        /// field's big-endian value, UDP's zero included.
        #[test]
        fn wire_delta_applies_as_the_delta(
            changes in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..6),
            checksum in any::<u16>(),
        ) {
            let delta = changes.iter().fold(Delta::default(), |d, &(old, new)| d.word(old, new));
            let on_wire = delta.on_wire();
            prop_assert_eq!(on_wire.apply(checksum.to_be_bytes()), delta.apply(checksum).to_be_bytes());
            prop_assert_eq!(on_wire.apply_udp(checksum.to_be_bytes()), delta.apply_udp(checksum).to_be_bytes());
        }

        #[test]
        fn folds_equal_folding_step_by_step_anywhere(acc in any::<u64>()) {
            prop_assert_eq!(fold64(acc), fold_by_steps(acc));
            prop_assert_eq!(fold(acc as u32), fold_by_steps(u64::from(acc as u32)));
        }

        /// Address deltas as 32-bit words equal word-by-word deltas.
        #[test]
        fn address_delta_words(old in any::<[u8; 16]>(), new in any::<[u8; 16]>(), checksum in any::<u16>()) {
            let mut by_words = Delta::default();
            for i in (0..16).step_by(2) {
                by_words = by_words.word(
                    u16::from_be_bytes([old[i], old[i + 1]]),
                    u16::from_be_bytes([new[i], new[i + 1]]),
                );
            }
            prop_assert_eq!(Delta::default().addr6(old, new).apply(checksum), by_words.apply(checksum));
        }

        /// Updating any 16-bit word incrementally gives the same checksum
        /// as recomputing it over the changed data.
        #[test]
        fn incremental_equals_full(
            mut data in proptest::collection::vec(any::<u8>(), 2..128),
            changes in proptest::collection::vec((any::<usize>(), any::<u16>()), 1..6),
        ) {
            if data.len() % 2 == 1 { data.pop(); }
            let before = checksum(&data);
            let mut delta = Delta::default();
            for (at, new) in changes {
                let i = (at % (data.len() / 2)) * 2;
                let old = u16::from_be_bytes([data[i], data[i + 1]]);
                data[i..i + 2].copy_from_slice(&new.to_be_bytes());
                delta = delta.word(old, new);
            }
            let full = checksum(&data);
            let incremental = delta.apply(before);
            // 0x0000 and 0xffff are the two one's-complement zeros; a
            // verifier accepts either (RFC 1624 section 3).
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff && (full == 0 || full == 0xffff),
                "incremental {incremental:#06x} full {full:#06x}");
        }

        /// Rewriting addresses and ports of a UDP or TCP segment
        /// incrementally matches recomputing over the pseudo-header.
        #[test]
        fn l4_rewrite_matches_recompute(
            payload in proptest::collection::vec(any::<u8>(), 8..200),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            new_port in any::<u16>(), tcp in any::<bool>(),
        ) {
            let protocol = if tcp { 6 } else { 17 };
            let mut segment = payload.clone();
            let before = l4_checksum(src, dst, protocol, &segment);
            let old_port = u16::from_be_bytes([segment[2], segment[3]]);
            segment[2..4].copy_from_slice(&new_port.to_be_bytes());
            let delta = Delta::default().addr(dst, new_dst).word(old_port, new_port);
            let full = l4_checksum(src, new_dst, protocol, &segment);
            let incremental = delta.apply(before);
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff && (full == 0 || full == 0xffff),
                "incremental {incremental:#06x} full {full:#06x}");
        }

        /// The same over the IPv6 pseudo-header: 128-bit addresses.
        #[test]
        fn l4_rewrite_matches_recompute_v6(
            payload in proptest::collection::vec(any::<u8>(), 8..200),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(),
            new_port in any::<u16>(), tcp in any::<bool>(),
        ) {
            let next_header = if tcp { 6 } else { 17 };
            let mut segment = payload.clone();
            let before = l4_checksum_v6(src, dst, next_header, &segment);
            let old_port = u16::from_be_bytes([segment[2], segment[3]]);
            segment[2..4].copy_from_slice(&new_port.to_be_bytes());
            let delta = Delta::default().addr6(dst, new_dst).word(old_port, new_port);
            let full = l4_checksum_v6(src, new_dst, next_header, &segment);
            let incremental = delta.apply(before);
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff && (full == 0 || full == 0xffff),
                "incremental {incremental:#06x} full {full:#06x}");
        }

        /// Both addresses of the IPv6 pseudo-header changed at once, as
        /// an ICMPv6 error's outer header is rewritten (or, under source
        /// NAT, a first fragment's, whose UDP checksum covers the whole
        /// datagram): the incremental update matches recomputing.
        #[test]
        fn both_addresses_rewrite_matches_recompute_v6(
            message in proptest::collection::vec(any::<u8>(), 8..1232),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            new_src in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(),
        ) {
            let before = l4_checksum_v6(src, dst, 58, &message);
            let delta = Delta::default().addr6(src, new_src).addr6(dst, new_dst);
            let full = l4_checksum_v6(new_src, new_dst, 58, &message);
            let incremental = delta.apply(before);
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff && (full == 0 || full == 0xffff),
                "incremental {incremental:#06x} full {full:#06x}");
        }
    }

    /// RFC 8200's pseudo-header, checked against an independent sum: a
    /// UDP datagram as etherparse builds it verifies to zero.
    #[test]
    fn ipv6_pseudo_header_matches_etherparse() {
        let src = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [0x20, 0x01, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ipv6(src, dst, 64)
            .udp(40000, 53)
            .write(&mut frame, b"query")
            .expect("builds");
        assert_eq!(l4_checksum_v6(src, dst, 17, &frame[40..]), 0);
    }
}

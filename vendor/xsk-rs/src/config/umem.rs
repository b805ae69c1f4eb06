use libxdp_sys::{
    XDP_PACKET_HEADROOM, XSK_RING_CONS__DEFAULT_NUM_DESCS, XSK_RING_PROD__DEFAULT_NUM_DESCS,
    XSK_UMEM__DEFAULT_FRAME_HEADROOM, XSK_UMEM__DEFAULT_FRAME_SIZE, xsk_umem_config,
};
use std::{error, fmt};

use crate::util;

use super::{FrameSize, QueueSize};

/// Builder for a [`UmemConfig`](Config).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Creates a new [`UmemConfigBuilder`](ConfigBuilder) instance.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the frame size. Default is
    /// [`XSK_UMEM__DEFAULT_FRAME_SIZE`]. Must be a power of two.
    pub fn frame_size(&mut self, size: FrameSize) -> &mut Self {
        self.config.frame_size = size;
        self
    }

    /// Set the [`FillQueue`](crate::FillQueue) size. Default is
    /// [`XSK_RING_PROD__DEFAULT_NUM_DESCS`].
    pub fn fill_queue_size(&mut self, size: QueueSize) -> &mut Self {
        self.config.fill_queue_size = size;
        self
    }

    /// Set the [`CompQueue`](crate::CompQueue) size. Default is
    /// [`XSK_RING_CONS__DEFAULT_NUM_DESCS`].
    pub fn comp_queue_size(&mut self, size: QueueSize) -> &mut Self {
        self.config.comp_queue_size = size;
        self
    }

    /// Set the frame headroom available to the user. Default size is
    /// [`XSK_UMEM__DEFAULT_FRAME_HEADROOM`].
    ///
    /// Not to be confused with [`XDP_PACKET_HEADROOM`] which is the
    /// amount of headroom reserved by XDP. This headroom sits at the
    /// start of the frame, ahead of the XDP program's.
    pub fn frame_headroom(&mut self, headroom: u32) -> &mut Self {
        self.config.frame_headroom = headroom;
        self
    }

    /// Places frames `stride` bytes apart instead of `frame_size`
    /// (cipgw patch, see CIPGW-PATCH.md). A stride larger than the
    /// frame size registers the UMEM with unaligned chunks
    /// (`XDP_UMEM_UNALIGNED_CHUNK_FLAG`): each frame keeps `frame_size`
    /// bytes, and consecutive frames' packets start at different offsets
    /// within a page, so they fall in different cache sets.
    pub fn frame_stride(&mut self, stride: u32) -> &mut Self {
        self.config.frame_stride = stride;
        self
    }

    /// Build a [`UmemConfig`](Config) instance using the values set
    /// in this builder.
    ///
    /// May fail if some of the values are incompatible. For example,
    /// if the requested frame headroom leaves no room in the frame for
    /// packet data, or if the frame size is not a power of two.
    pub fn build(&self) -> Result<Config, ConfigBuildError> {
        let frame_size = self.config.frame_size.get();

        if !util::is_pow_of_two(frame_size) {
            return Err(ConfigBuildError {
                kind: ConfigBuildErrorKind::FrameSizeNotPowerOfTwo { frame_size },
            });
        }

        // Widened, since the two headrooms are each free to be any
        // `u32` and so can overflow one when added.
        let total_headroom = (XDP_PACKET_HEADROOM as u64) + (self.config.frame_headroom as u64);

        if total_headroom >= (frame_size as u64) {
            return Err(ConfigBuildError {
                kind: ConfigBuildErrorKind::TotalHeadroomLeavesNoRoomForData {
                    frame_size,
                    total_headroom,
                },
            });
        }

        let frame_stride = self.config.frame_stride;

        if frame_stride != 0 && frame_stride < frame_size {
            return Err(ConfigBuildError {
                kind: ConfigBuildErrorKind::FrameStrideBelowFrameSize {
                    frame_size,
                    frame_stride,
                },
            });
        }

        Ok(self.config)
    }
}

/// Config for a [`Umem`](crate::umem::Umem) instance.
///
/// It's worth noting that the specified `frame_size` is not
/// necessarily the buffer size that will be available to write data
/// into. Some of this will be eaten up by XDP program headroom
/// ([`XDP_PACKET_HEADROOM`]) and any non-zero `frame_headroom`. Use
/// the [`mtu`](Config::mtu) function to determine whether the frame
/// is large enough to hold the data you wish to transmit.
///
/// A frame is laid out as the user's `frame_headroom`, then the XDP
/// program's [`XDP_PACKET_HEADROOM`], then the packet data.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    frame_size: FrameSize,
    fill_queue_size: QueueSize,
    comp_queue_size: QueueSize,
    frame_headroom: u32,
    /// 0: the frame size.
    frame_stride: u32,
}

impl Config {
    /// Creates a new [`UmemConfigBuilder`](ConfigBuilder) instance
    /// with with sizes as per the `libbpf` defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::new()
    }

    /// The size of each frame in the [`Umem`](crate::Umem).
    pub fn frame_size(&self) -> FrameSize {
        self.frame_size
    }

    /// The [`FillQueue`](crate::FillQueue) size.
    pub fn fill_queue_size(&self) -> QueueSize {
        self.fill_queue_size
    }

    /// The [`CompQueue`](crate::CompQueue) size.
    pub fn comp_queue_size(&self) -> QueueSize {
        self.comp_queue_size
    }

    /// The frame headroom reserved for the XDP program.
    pub fn xdp_headroom(&self) -> u32 {
        XDP_PACKET_HEADROOM
    }

    /// The frame headroom available to the user, at the start of the
    /// frame.
    pub fn frame_headroom(&self) -> u32 {
        self.frame_headroom
    }

    /// Bytes from one frame's start to the next one's.
    pub fn frame_stride(&self) -> u32 {
        if self.frame_stride == 0 {
            self.frame_size.get()
        } else {
            self.frame_stride
        }
    }

    /// Whether the UMEM is registered with unaligned chunks: frames
    /// placed other than a frame size apart.
    pub fn unaligned_chunks(&self) -> bool {
        self.frame_stride() != self.frame_size.get()
    }

    /// The maximum transmission unit, or the length of the packet
    /// data segment of the frame.
    ///
    /// Is defined as the frame size minus both the XDP headroom and
    /// user headroom.
    pub fn mtu(&self) -> u32 {
        self.frame_size.get() - (self.xdp_headroom() + self.frame_headroom)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            frame_size: FrameSize(XSK_UMEM__DEFAULT_FRAME_SIZE),
            fill_queue_size: QueueSize(XSK_RING_PROD__DEFAULT_NUM_DESCS),
            comp_queue_size: QueueSize(XSK_RING_CONS__DEFAULT_NUM_DESCS),
            frame_headroom: XSK_UMEM__DEFAULT_FRAME_HEADROOM,
            frame_stride: 0,
        }
    }
}

impl From<Config> for xsk_umem_config {
    fn from(c: Config) -> Self {
        xsk_umem_config {
            fill_size: c.fill_queue_size.get(),
            comp_size: c.comp_queue_size.get(),
            frame_size: c.frame_size.get(),
            frame_headroom: c.frame_headroom,
            flags: if c.unaligned_chunks() {
                libc::XDP_UMEM_UNALIGNED_CHUNK_FLAG
            } else {
                0
            },
        }
    }
}

/// Error detailing why [`UmemConfig`](Config) creation failed.
#[derive(Debug)]
pub struct ConfigBuildError {
    kind: ConfigBuildErrorKind,
}

#[derive(Debug)]
enum ConfigBuildErrorKind {
    TotalHeadroomLeavesNoRoomForData {
        frame_size: u32,
        total_headroom: u64,
    },
    FrameSizeNotPowerOfTwo {
        frame_size: u32,
    },
    FrameStrideBelowFrameSize {
        frame_size: u32,
        frame_stride: u32,
    },
}

impl fmt::Display for ConfigBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ConfigBuildErrorKind::TotalHeadroomLeavesNoRoomForData {
                frame_size,
                total_headroom,
            } => write!(
                f,
                "total headroom {total_headroom} must be less than frame size {frame_size}"
            ),
            ConfigBuildErrorKind::FrameSizeNotPowerOfTwo { frame_size } => {
                write!(f, "expected a power of two as frame size, got {frame_size}")
            }
            ConfigBuildErrorKind::FrameStrideBelowFrameSize {
                frame_size,
                frame_stride,
            } => {
                write!(
                    f,
                    "frame stride {frame_stride} must be at least the frame size {frame_size}"
                )
            }
        }
    }
}

impl error::Error for ConfigBuildError {}

#[cfg(test)]
mod tests {
    use std::convert::TryInto;

    use crate::config::XDP_UMEM_MIN_CHUNK_SIZE;

    use super::*;

    #[test]
    fn frame_size_must_be_greater_than_total_headroom() {
        assert!(
            ConfigBuilder::new()
                .frame_headroom(XDP_UMEM_MIN_CHUNK_SIZE - (XDP_PACKET_HEADROOM + 1))
                .frame_size(XDP_UMEM_MIN_CHUNK_SIZE.try_into().unwrap())
                .build()
                .is_ok()
        );

        // Leaves a zero length mtu.
        assert!(
            ConfigBuilder::new()
                .frame_headroom(XDP_UMEM_MIN_CHUNK_SIZE - XDP_PACKET_HEADROOM)
                .frame_size(XDP_UMEM_MIN_CHUNK_SIZE.try_into().unwrap())
                .build()
                .is_err()
        );
    }

    #[test]
    fn frame_headroom_that_overflows_the_total_is_rejected() {
        assert!(
            ConfigBuilder::new()
                .frame_headroom(u32::MAX)
                .frame_size(XDP_UMEM_MIN_CHUNK_SIZE.try_into().unwrap())
                .build()
                .is_err()
        );
    }

    #[test]
    fn frame_size_must_be_a_power_of_two() {
        assert!(
            ConfigBuilder::new()
                .frame_size(XDP_UMEM_MIN_CHUNK_SIZE.try_into().unwrap())
                .build()
                .is_ok()
        );

        assert!(
            ConfigBuilder::new()
                .frame_size((XDP_UMEM_MIN_CHUNK_SIZE + 1).try_into().unwrap())
                .build()
                .is_err()
        );
    }

    #[test]
    fn frame_stride_defaults_to_the_frame_size_and_may_not_be_less() {
        let size = XDP_UMEM_MIN_CHUNK_SIZE;
        let aligned = ConfigBuilder::new()
            .frame_size(size.try_into().unwrap())
            .build()
            .unwrap();
        assert_eq!(aligned.frame_stride(), size);
        assert!(!aligned.unaligned_chunks());
        assert_eq!(xsk_umem_config::from(aligned).flags, 0);

        let spread = ConfigBuilder::new()
            .frame_size(size.try_into().unwrap())
            .frame_stride(size + 64)
            .build()
            .unwrap();
        assert_eq!(spread.frame_stride(), size + 64);
        assert!(spread.unaligned_chunks());
        assert_eq!(
            xsk_umem_config::from(spread).flags,
            libc::XDP_UMEM_UNALIGNED_CHUNK_FLAG
        );
        // The frame keeps its size: the stride adds no room.
        assert_eq!(spread.mtu(), aligned.mtu());

        assert!(
            ConfigBuilder::new()
                .frame_size(size.try_into().unwrap())
                .frame_stride(size - 64)
                .build()
                .is_err()
        );
    }

    #[test]
    fn frame_mtu_has_expected_value() {
        let frame_headroom = 1024;

        let config = ConfigBuilder::new()
            .frame_headroom(frame_headroom)
            .frame_size(XDP_UMEM_MIN_CHUNK_SIZE.try_into().unwrap())
            .build()
            .unwrap();

        assert_eq!(
            config.mtu(),
            XDP_UMEM_MIN_CHUNK_SIZE - (frame_headroom + XDP_PACKET_HEADROOM)
        );
    }
}

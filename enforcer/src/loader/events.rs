//! Reading [`FlowEvent`]s from the kernel's ring buffer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{MapData, RingBuf};
use enforcer_common::event::FlowEvent;

use super::LoaderError;

/// The consumer side of the event ring buffer. Its file descriptor becomes readable when
/// events are waiting (for `tokio::io::unix::AsyncFd` or `poll`).
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// The next waiting event, or `None` when the ring is empty. A record of the wrong
    /// size (a kernel object from another build) is an error, not skipped.
    pub fn next_event(&mut self) -> Option<Result<FlowEvent, LoaderError>> {
        let item = self.ring.next()?;
        Some(decode(&item))
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventReader {
    /// The ring map's descriptor, owned by the reader for its whole life.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}

/// A ring-buffer record as a [`FlowEvent`].
fn decode(bytes: &[u8]) -> Result<FlowEvent, LoaderError> {
    if bytes.len() != size_of::<FlowEvent>() {
        return Err(LoaderError::EventSize(bytes.len()));
    }
    // SAFETY: the slice holds exactly `size_of::<FlowEvent>()` bytes, and `FlowEvent` is
    // plain data for which every bit pattern is valid (see its `Pod` impl); the read is
    // unaligned because ring-buffer records are only 8-byte aligned by convention.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_the_wrong_size_is_an_error() {
        assert!(matches!(
            decode(&[0u8; 103]),
            Err(LoaderError::EventSize(103))
        ));
        let mut event = FlowEvent::ZEROED;
        event.rule_id = 7;
        event.dst_port = 443;
        // SAFETY: `FlowEvent` is plain data without padding; its bytes are initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&event).cast::<u8>(),
                size_of::<FlowEvent>(),
            )
        };
        assert_eq!(decode(bytes).unwrap(), event);
    }
}

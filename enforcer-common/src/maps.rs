//! Names and sizes of the maps the kernel object declares, shared so the agent and the
//! tests refer to them by the same constant the kernel programs were built with.

/// The ring buffer of [`crate::event::FlowEvent`] records.
pub const EVENTS: &str = "EVENTS";

/// Size of [`EVENTS`] in bytes: a power of two and a multiple of the page size, as the
/// kernel requires. 16 MiB holds about 150k events (record plus 8-byte header).
pub const EVENTS_RING_BYTES: u32 = 16 << 20;

const _: () = assert!(EVENTS_RING_BYTES.is_power_of_two());
const _: () = assert!(EVENTS_RING_BYTES.is_multiple_of(4096));

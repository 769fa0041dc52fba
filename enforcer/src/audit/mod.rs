//! The audit pipeline: the agent's ring-buffer consumer ([`consumer`]) turns each kernel
//! flow event into an OCSF-shaped [`record::Record`], and the [`store`] appends them to
//! hash-chained, rotated JSON Lines files that [`verify`] checks, [`read`] queries and
//! [`forward`] sends to a syslog collector.

pub mod chain;
pub mod consumer;
pub mod enrich;
pub mod files;
pub mod forward;
pub mod read;
pub mod record;
pub mod store;
pub mod verify;

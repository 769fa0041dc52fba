//! The audit trail: OCSF-shaped [`record::Record`]s (which the agent's consumer makes
//! from kernel flow events), the [`store`] that appends them to hash-chained, rotated
//! segment files ([`compact`] binary, or JSON Lines; [`files`] reads either), and what
//! reads those files: [`verify`] checks them, [`read`] queries
//! them, [`export`] writes them for other tools (OCSF JSON Lines, CSV, Parquet), [`replay`]
//! decides their flows again under a candidate policy and [`forward`] sends them to a syslog
//! collector.

pub mod chain;
pub mod compact;
pub mod export;
pub mod files;
pub mod forward;
pub mod history;
pub mod ordered;
pub mod read;
pub mod record;
pub mod replay;
pub mod seal;
pub mod store;
pub mod verify;

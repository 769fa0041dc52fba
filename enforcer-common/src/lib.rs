//! Types shared by the enforcer kernel programs (`enforcer-ebpf`) and the agent (`enforcer`).
//!
//! Everything here is `#![no_std]` and `#[repr(C)]` with explicit padding, so that the
//! kernel and userspace agree on every byte. Each shared struct carries a compile-time
//! size and alignment assertion: a layout change is a build error, never a silent
//! misread of a map or ring-buffer record.
#![no_std]

pub mod decision;
pub mod event;
pub mod maps;
mod wire;

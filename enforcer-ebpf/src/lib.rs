//! Library target of the kernel crate; it exists so `enforcer`'s build script can depend
//! on this package (cargo cannot yet express a dependency on a binary target).
#![no_std]

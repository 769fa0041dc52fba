//! The `bpf()` commands the loader needs and aya 0.16 keeps to itself, issued directly with
//! the kernel's own `bpf_attr` layout (bindgen'd in `aya_obj::generated`). Each function
//! here works around one gap; drop it when aya offers the same:
//!
//! - **Opening a pinned link's descriptor** (`BPF_OBJ_GET`, [`open_pin`]): aya's
//!   `PinnedLink::from_pin` opens the pin but keeps the descriptor private, and the two
//!   commands below need it.
//! - **Replacing a link's program in place** (`BPF_LINK_UPDATE`, [`link_update`]): aya has
//!   no public link update, and it is how a restarted agent adopts its pinned links without
//!   a second attach.
//! - **What a link is attached to** (`BPF_OBJ_GET_INFO_BY_FD`, [`link_details`]): aya's
//!   `LinkInfo` gives the link's id, program and type, not its cgroup id or interface
//!   index.
//! - **A cgroup sockopt link's descriptor** (`BPF_LINK_CREATE`, [`link_create`], and
//!   `BPF_OBJ_PIN`, [`pin`]): aya 0.16 attaches the setsockopt program through a link it
//!   cannot turn into an `FdLink`, so that link could be neither pinned nor kept.
//! - **Batched map writes and deletes** (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`,
//!   in [`super::batch`], through [`bpf`]): aya only writes and deletes one entry per call.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// An all-zero `bpf_attr`, as every command expects its unused fields.
pub(super) fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a C union of integer fields (and structs and unions of them),
    // for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Calls `bpf(cmd, attr, sizeof(bpf_attr))` and returns what it returned.
///
/// # Safety
///
/// The member of `attr` that `cmd` reads must be filled in as the kernel documents for
/// `cmd` (the other bytes zero), and every user pointer in it must be valid, for the whole
/// call, for what the kernel does through it: reads of NUL-terminated strings, and reads
/// or writes of as many bytes as the sizes and counts next to it (and, for map batches,
/// the map's key and value sizes) say.
pub(super) unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable `bpf_attr` of the size passed; the caller
    // vouches for the pointers in it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the object pinned at `path` (aya's `PinnedLink` keeps its descriptor private).
pub fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    // SAFETY: `BPF_OBJ_GET` reads `pathname`, a NUL-terminated string that `path` keeps
    // alive across the call.
    let fd = unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `program` to `target` (a cgroup directory for the cgroup attach types) as
/// `attach_type` through a new link, and returns the link: it stays attached while the
/// descriptor or a pin of it lives.
pub fn link_create(
    program: impl AsFd,
    target: impl AsFd,
    attach_type: bpf_attach_type,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = raw(program.as_fd());
    attr.link_create.__bindgen_anon_2.target_fd = raw(target.as_fd());
    attr.link_create.attach_type = attach_type as u32;
    // SAFETY: `BPF_LINK_CREATE` with a cgroup attach type reads two descriptors, the
    // attach type and the flags (zero), and no pointer.
    let fd = unsafe { bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the object behind `fd` (a link) at `path` on bpffs.
pub fn pin(fd: impl AsFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = raw(fd.as_fd());
    // SAFETY: `BPF_OBJ_PIN` reads a descriptor and `pathname`, a NUL-terminated string
    // that `path` keeps alive across the call.
    unsafe { bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// The descriptor number, as `bpf_attr` fields hold it.
pub(super) fn raw(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("open descriptors are not negative")
}

/// Makes the link run `program` instead of its current program, atomically: the hook is
/// never without a program.
pub fn link_update(link: impl AsFd, program: impl AsFd) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = raw(link.as_fd());
    attr.link_update.__bindgen_anon_1.new_prog_fd = raw(program.as_fd());
    // SAFETY: `BPF_LINK_UPDATE` reads two descriptors and no pointer.
    unsafe { bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// What a link is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTarget {
    /// A cgroup, by id.
    Cgroup(u64),
    /// An interface, by index.
    Xdp(u32),
    /// Any other kind of link.
    Other,
}

/// The kernel's view of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkDetails {
    /// The link id.
    pub id: u32,
    /// The id of the program it runs.
    pub program_id: u32,
    /// What it is attached to.
    pub target: LinkTarget,
}

/// Reads the kernel's view of `link`.
pub fn link_details(link: impl AsFd) -> io::Result<LinkDetails> {
    // SAFETY: `bpf_link_info` is a C struct of integers and a union of structs of
    // integers, for which all-zero bytes are a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = raw(link.as_fd());
    attr.info.info_len = u32::try_from(size_of::<bpf_link_info>()).expect("small struct");
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    // SAFETY: `BPF_OBJ_GET_INFO_BY_FD` writes at most `info_len` bytes at `info`, which
    // points to a `bpf_link_info` of that size living across the call.
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let target = if info.type_ == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 {
        // SAFETY: the kernel fills the union's `cgroup` member for cgroup links; every
        // bit pattern is a valid integer.
        LinkTarget::Cgroup(unsafe { info.__bindgen_anon_1.cgroup.cgroup_id })
    } else if info.type_ == bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        // SAFETY: as above, the `xdp` member for XDP links.
        LinkTarget::Xdp(unsafe { info.__bindgen_anon_1.xdp.ifindex })
    } else {
        LinkTarget::Other
    };
    Ok(LinkDetails {
        id: info.id,
        program_id: info.prog_id,
        target,
    })
}

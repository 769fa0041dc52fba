//! The `bpf()` commands aya 0.16 keeps to itself: replacing a link's program in place
//! (`BPF_LINK_UPDATE`), which is how a restarted agent adopts its pinned links without a
//! second attach, reading what a link is attached to (`BPF_OBJ_GET_INFO_BY_FD`), and the
//! batched map writes of [`super::batch`].

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// Calls `bpf(cmd, attr, size_of(attr))` and returns what it returned.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable `repr(C)` attribute block of the size passed,
    // laid out as the kernel's `union bpf_attr` member for `cmd`, with every pointer in
    // it valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens the object pinned at `path` (aya's `PinnedLink` keeps its descriptor private).
pub fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The descriptor number, as `bpf_attr` fields hold it.
pub(super) fn raw(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("open descriptors are not negative")
}

/// `bpf_attr.link_update`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Makes the link run `program` instead of its current program, atomically: the hook is
/// never without a program.
pub fn link_update(link: impl AsFd, program: impl AsFd) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: raw(link.as_fd()),
        new_prog_fd: raw(program.as_fd()),
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `bpf_attr.info`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info`: the common head, then the per-type union (at offset 16, as
/// the union holds 64-bit members), with room to spare.
#[repr(C, align(8))]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    target: [u8; 64],
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
    let mut info = RawLinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        target: [0; 64],
    };
    let mut attr = InfoAttr {
        bpf_fd: raw(link.as_fd()),
        info_len: u32::try_from(size_of::<RawLinkInfo>()).expect("small struct"),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // The union's first member: `__u64 cgroup_id` for cgroup links, `__u32 ifindex`
    // for XDP links, in host byte order.
    let [a, b, c, d, e, f, g, h, ..] = info.target;
    let target = match info.link_type {
        BPF_LINK_TYPE_CGROUP => LinkTarget::Cgroup(u64::from_ne_bytes([a, b, c, d, e, f, g, h])),
        BPF_LINK_TYPE_XDP => LinkTarget::Xdp(u32::from_ne_bytes([a, b, c, d])),
        _ => LinkTarget::Other,
    };
    Ok(LinkDetails {
        id: info.id,
        program_id: info.prog_id,
        target,
    })
}

//! Tiny XDP programs loaded and run through the raw `bpf()` system call, for the
//! benchmarks (aya loads programs only from objects): an empty program as the
//! `BPF_PROG_TEST_RUN` floor, a live-frames packet generator, programs of instructions
//! assembled elsewhere ([`insn`], [`RawXdp::load`]), and the map operations they need.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// `BPF_PROG_LOAD` attributes (the leading fields of `union bpf_attr`; the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u64; 12],
}

/// `BPF_PROG_TEST_RUN` attributes (the `test` member of `union bpf_attr`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    rest: [u32; 5],
}

/// `struct xdp_md`, the context a live-frames run starts each frame with.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: each frame's verdict is carried out (`XDP_TX` sends it).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per batch of a live-frames run (the kernel's default, `NAPI_POLL_WEIGHT`).
const LIVE_BATCH: u32 = 64;

/// Calls `bpf(cmd, attr, size_of(attr))`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long, String> {
    // SAFETY: `attr` is a valid, writable `repr(C)` attribute block of the size passed,
    // laid out as the kernel's `union bpf_attr` member for `cmd`, with every pointer in
    // it valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        Err(format!(
            "bpf({cmd}) failed: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor `bpf()` returned.
fn owned(fd: libc::c_long) -> Result<OwnedFd, String> {
    let fd = i32::try_from(fd).map_err(|_| "bpf() returned a bad descriptor".to_owned())?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One eBPF instruction: `opcode`, destination and source registers, offset, immediate.
pub const fn insn(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (imm as u32 as u64) << 32
        | (off as u16 as u64) << 16
        | ((src as u64) << 12)
        | ((dst as u64) << 8)
        | opcode as u64
}

/// An XDP program loaded from raw instructions, run through `BPF_PROG_TEST_RUN`.
pub struct RawXdp {
    fd: OwnedFd,
}

impl RawXdp {
    /// The floor: `r0 = XDP_PASS; exit`.
    pub fn empty() -> Result<Self, String> {
        Self::load(&[insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)])
    }

    /// A generator for [`RawXdp::send_live`]: each frame (an Ethernet, IPv4, TCP frame of
    /// at least 42 bytes) gets a random low half of its IPv4 source address and a random
    /// TCP source port, and goes back out with `XDP_TX`. The checksums stay valid without
    /// being recomputed: the IP identification is set to the complement of the address's
    /// low half, and the two halves of the TCP sequence number to the complements of the
    /// address's low half and of the port, so every ones'-complement sum is unchanged
    /// (the template must have 0 in those address and port bytes and 0xffff in those
    /// identification and sequence bytes).
    pub fn source_randomizer() -> Result<Self, String> {
        Self::load(&[
            insn(0x61, 6, 1, 0, 0),  // r6 = ctx->data
            insn(0x61, 7, 1, 4, 0),  // r7 = ctx->data_end
            insn(0xbf, 2, 6, 0, 0),  // r2 = r6
            insn(0x07, 2, 0, 0, 42), // r2 += 42
            insn(0x2d, 2, 7, 10, 0), // if r2 > r7 goto out
            insn(0x85, 0, 0, 0, 7),  // r0 = bpf_get_prandom_u32()
            insn(0x6b, 6, 0, 28, 0), // source address, low half = r0
            insn(0xbf, 1, 0, 0, 0),  // r1 = r0
            insn(0xa7, 1, 0, 0, -1), // r1 = ~r1
            insn(0x6b, 6, 1, 18, 0), // IP identification = ~r0
            insn(0x6b, 6, 1, 38, 0), // TCP sequence, high half = ~r0
            insn(0x77, 0, 0, 0, 16), // r0 >>= 16
            insn(0x6b, 6, 0, 34, 0), // TCP source port = r0 >> 16
            insn(0xa7, 0, 0, 0, -1), // r0 = ~r0
            insn(0x6b, 6, 0, 40, 0), // TCP sequence, low half = ~(r0 >> 16)
            insn(0xb7, 0, 0, 0, 3),  // out: r0 = XDP_TX
            insn(0x95, 0, 0, 0, 0),  // exit
        ])
    }

    /// Loads `instructions`; a rejection carries the verifier's log.
    pub fn load(instructions: &[u64]) -> Result<Self, String> {
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: u32::try_from(instructions.len()).expect("a short program"),
            insns: instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: u32::try_from(log.len()).expect("small log"),
            log_buf: log.as_mut_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|err| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            format!("{err}: {}", String::from_utf8_lossy(&log[..end]))
        })?;
        Ok(Self { fd: owned(fd)? })
    }

    fn prog_fd(&self) -> u32 {
        u32::try_from(self.fd.as_raw_fd()).expect("descriptors are positive")
    }

    /// Runs the program on `packet` `repeat` times; returns its action and the kernel's
    /// mean time per run.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), String> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: self.prog_fd(),
            data_size_in: u32::try_from(packet.len()).expect("small packet"),
            data_size_out: u32::try_from(out.len()).expect("small buffer"),
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok((attr.retval, Duration::from_nanos(u64::from(attr.duration))))
    }

    /// Runs the program `repeat` times on live frames made from `frame`, as if each had
    /// arrived on interface `ifindex` (an index in the calling thread's network
    /// namespace); a verdict of `XDP_TX` sends the frame out of that interface.
    pub fn send_live(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<(), String> {
        let mut context = XdpMd {
            data_end: u32::try_from(frame.len()).expect("small frame"),
            ingress_ifindex: ifindex,
            ..XdpMd::default()
        };
        let mut attr = TestRunAttr {
            prog_fd: self.prog_fd(),
            data_size_in: u32::try_from(frame.len()).expect("small frame"),
            data_in: frame.as_ptr() as u64,
            repeat,
            ctx_size_in: u32::try_from(size_of::<XdpMd>()).expect("small context"),
            ctx_in: std::ptr::from_mut(&mut context) as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: LIVE_BATCH,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }
}

/// `BPF_MAP_CREATE` attributes (the leading fields; the rest zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    rest: [u32; 27],
}

/// `BPF_MAP_*_ELEM` and `BPF_MAP_GET_NEXT_KEY` attributes.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A BPF ring buffer of `bytes` bytes of its own.
pub fn ring_buffer(bytes: u32) -> Result<OwnedFd, String> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        max_entries: bytes,
        ..MapCreateAttr::default()
    };
    owned(bpf(BPF_MAP_CREATE, &mut attr)?)
}

/// A BPF array of `entries` entries of `value_size` bytes (4-byte keys).
pub fn array_map(value_size: u32, entries: u32) -> Result<OwnedFd, String> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: entries,
        ..MapCreateAttr::default()
    };
    owned(bpf(BPF_MAP_CREATE, &mut attr)?)
}

/// `BPF_OBJ_PIN` attributes.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    rest: [u32; 28],
}

/// Pins the BPF object `fd` at `path` (on a bpffs).
pub fn pin(fd: BorrowedFd, path: &std::path::Path) -> Result<(), String> {
    let pathname = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} holds a NUL", path.display()))?;
    let mut attr = ObjPinAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: u32::try_from(fd.as_raw_fd()).expect("descriptors are positive"),
        ..ObjPinAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// The `len` bytes of the value at `key` in `map` (not a per-CPU map); `None` when absent.
pub fn map_value(map: BorrowedFd, key: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut value = vec![0u8; len];
    let mut attr = MapElemAttr {
        map_fd: u32::try_from(map.as_raw_fd()).expect("descriptors are positive"),
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..MapElemAttr::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
}

/// The keys (`len` bytes each) of a hash map, at most `limit` of them.
pub fn map_keys(map: BorrowedFd, len: usize, limit: usize) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    while keys.len() < limit {
        let mut next = vec![0u8; len];
        let mut attr = MapElemAttr {
            map_fd: u32::try_from(map.as_raw_fd()).expect("descriptors are positive"),
            // No key asks for the first one.
            key: keys.last().map_or(0, |key| key.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            ..MapElemAttr::default()
        };
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).is_err() {
            break;
        }
        keys.push(next);
    }
    keys
}

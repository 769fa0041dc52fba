//! XDP programs of a few instructions, assembled here and loaded with the `bpf()` system
//! call (aya loads programs only from objects): the empty floor, and programs that make
//! exactly one of the deny path's map operations, on the real program's own maps.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::time::Duration;

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
    rest: [u64; 8],
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

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// Helper ids (`enum bpf_func_id`).
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_ktime_get_boot_ns`.
pub const HELPER_KTIME_GET_BOOT_NS: i32 = 125;
const HELPER_RINGBUF_OUTPUT: i32 = 130;

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

/// A BPF ring buffer of `bytes` bytes of its own (the real one would fill up and then
/// time the failing path).
pub fn ring_buffer(bytes: u32) -> Result<OwnedFd, String> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        max_entries: bytes,
        ..MapCreateAttr::default()
    };
    owned(bpf(BPF_MAP_CREATE, &mut attr)?)
}

/// One instruction: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let [off_lo, off_hi] = off.to_le_bytes();
    let [i0, i1, i2, i3] = imm.to_le_bytes();
    u64::from_le_bytes([code, dst | (src << 4), off_lo, off_hi, i0, i1, i2, i3])
}

/// An XDP program being assembled. Every program ends `r0 = XDP_PASS; exit`.
#[derive(Default)]
pub struct Asm {
    insns: Vec<u64>,
    /// Bytes of stack used so far (below r10).
    stack: i16,
}

impl Asm {
    /// Writes `bytes` (zero-padded to 8) onto fresh stack with 4-byte immediate stores, as
    /// the real program builds its keys; returns their offset from r10.
    fn stack_bytes(&mut self, bytes: &[u8]) -> i16 {
        let len = i16::try_from(bytes.len().div_ceil(8) * 8).expect("small key");
        self.stack += len;
        assert!(self.stack <= 512, "the BPF stack is 512 bytes");
        let base = -self.stack;
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            let at = base + i16::try_from(i * 4).expect("small key");
            // *(u32 *)(r10 + at) = word
            self.insns
                .push(insn(0x62, 10, 0, at, i32::from_le_bytes(word)));
        }
        base
    }

    /// `r{reg} = map` (a 16-byte load of the map's descriptor).
    fn load_map(&mut self, reg: u8, map: BorrowedFd) {
        self.insns.push(insn(0x18, reg, 1, 0, map.as_raw_fd()));
        self.insns.push(0);
    }

    /// `r0 = bpf_map_lookup_elem(map, &key)`.
    pub fn lookup(&mut self, map: BorrowedFd, key: &[u8]) -> &mut Self {
        let at = self.stack_bytes(key);
        self.load_map(1, map);
        self.insns.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
        self.insns.push(insn(0x07, 2, 0, 0, i32::from(at))); // r2 += at
        self.call(HELPER_MAP_LOOKUP_ELEM)
    }

    /// A lookup, then `*(u64 *)(r0 + offset) += 1` when it found the entry: a per-CPU
    /// counter's plain add.
    pub fn lookup_add(&mut self, map: BorrowedFd, key: &[u8], offset: i16) -> &mut Self {
        self.lookup(map, key);
        self.insns.push(insn(0x15, 0, 0, 3, 0)); // if r0 == 0 goto +3
        self.insns.push(insn(0x79, 1, 0, offset, 0)); // r1 = *(u64 *)(r0 + offset)
        self.insns.push(insn(0x07, 1, 0, 0, 1)); // r1 += 1
        self.insns.push(insn(0x7b, 0, 1, offset, 0)); // *(u64 *)(r0 + offset) = r1
        self
    }

    /// A lookup, then `lock *(u64 *)(r0 + offset) += 1` when it found the entry: a shared
    /// counter's atomic add.
    pub fn lookup_atomic_add(&mut self, map: BorrowedFd, key: &[u8], offset: i16) -> &mut Self {
        self.lookup(map, key);
        self.insns.push(insn(0x15, 0, 0, 2, 0)); // if r0 == 0 goto +2
        self.insns.push(insn(0xb7, 1, 0, 0, 1)); // r1 = 1
        self.insns.push(insn(0xdb, 0, 1, offset, 0)); // lock *(u64 *)(r0 + offset) += r1
        self
    }

    /// A lookup, then `words` 8-byte immediate stores into the value it found: an event
    /// made field by field in per-CPU room.
    pub fn lookup_fill(&mut self, map: BorrowedFd, key: &[u8], words: i16) -> &mut Self {
        self.lookup(map, key);
        self.insns.push(insn(0x15, 0, 0, words, 0)); // if r0 == 0 goto +words
        for i in 0..words {
            self.insns.push(insn(0x7a, 0, 0, i * 8, 0x5a)); // *(u64 *)(r0 + 8i) = 0x5a
        }
        self
    }

    /// `bpf_ringbuf_output(ring, &record, len, 0)` of a zeroed record on the stack.
    pub fn ringbuf_output(&mut self, ring: BorrowedFd, len: usize) -> &mut Self {
        let at = self.stack_bytes(&vec![0; len]);
        self.load_map(1, ring);
        self.insns.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
        self.insns.push(insn(0x07, 2, 0, 0, i32::from(at))); // r2 += at
        let len = i32::try_from(len).expect("small record");
        self.insns.push(insn(0xb7, 3, 0, 0, len)); // r3 = len
        self.insns.push(insn(0xb7, 4, 0, 0, 0)); // r4 = 0
        self.call(HELPER_RINGBUF_OUTPUT)
    }

    /// A call of helper `id` (its arguments, if any, already in r1-r5).
    pub fn call(&mut self, id: i32) -> &mut Self {
        self.insns.push(insn(0x85, 0, 0, 0, id));
        self
    }

    /// Appends `r0 = XDP_PASS; exit` and loads the program.
    pub fn load(&mut self) -> Result<RawXdp, String> {
        self.insns.push(insn(0xb7, 0, 0, 0, 2)); // r0 = XDP_PASS
        self.insns.push(insn(0x95, 0, 0, 0, 0)); // exit
        RawXdp::load(&self.insns)
    }
}

/// A loaded XDP program of raw instructions.
pub struct RawXdp {
    fd: OwnedFd,
}

impl RawXdp {
    /// Loads `instructions`; a rejection carries the verifier's log.
    fn load(instructions: &[u64]) -> Result<Self, String> {
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: u32::try_from(instructions.len()).expect("small program"),
            insns: instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: u32::try_from(log.len()).expect("small log"),
            log_buf: log.as_mut_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|err| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            format!("{err}: {}", String::from_utf8_lossy(&log[..end]))
        })?;
        Ok(Self { fd: owned(fd)? })
    }

    /// Runs the program `repeat` times on `packet`: its XDP action and the kernel's mean
    /// time per run.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), String> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(self.fd.as_raw_fd()).expect("descriptors are positive"),
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

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

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

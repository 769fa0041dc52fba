//! XDP programs of a few instructions, assembled here (and loaded with
//! [`RawXdp::load`]): the empty floor, and programs that make exactly one of the deny
//! path's map operations, on the real program's own maps.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use enforcer_tests::bpf_raw::{RawXdp, insn};

/// Helper ids (`enum bpf_func_id`).
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_ktime_get_boot_ns`.
pub const HELPER_KTIME_GET_BOOT_NS: i32 = 125;
const HELPER_RINGBUF_OUTPUT: i32 = 130;

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

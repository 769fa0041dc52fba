//! Batched map writes and deletes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`), which
//! aya 0.16 does not offer: one system call per map instead of one per entry.
//!
//! A generation's maps hold thousands of entries (about 8,000 at 1k rules), and on a
//! virtual machine each `bpf()` call costs microseconds: at 1k rules, filling entry by
//! entry took about 20 ms of the 80 from a policy write to enforcement, batched 8 to 14.

use std::{io, os::fd::AsFd as _};

use aya::{
    Pod,
    maps::{Array, IterableMap, Map, MapData, MapError},
    sys::SyscallError,
};
use aya_obj::generated::bpf_cmd;

use super::sys::{bpf, raw, zeroed_attr};

/// Runs one batch command over `count` elements; fails naming `call` unless the kernel
/// took all of them (it stops at the first element it refuses, e.g. a full map).
///
/// # Safety
///
/// `keys` (and `values`, unless `cmd` is a delete) must point to `count` elements of
/// `map`'s key (value) size, valid for reads for the whole call.
unsafe fn run(
    cmd: bpf_cmd,
    call: &'static str,
    map: &MapData,
    keys: u64,
    values: u64,
    count: usize,
) -> Result<(), MapError> {
    if count == 0 {
        return Ok(());
    }
    let wanted = u32::try_from(count).map_err(|_| SyscallError {
        call,
        io_error: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut attr = zeroed_attr();
    attr.batch.keys = keys;
    attr.batch.values = values;
    attr.batch.count = wanted;
    attr.batch.map_fd = raw(map.fd().as_fd());
    // SAFETY: a batch write or delete reads `count` keys (and values) at `keys`
    // (`values`), which the caller vouches for, and writes back only `count`.
    unsafe { bpf(cmd, &mut attr) }.map_err(|io_error| SyscallError { call, io_error })?;
    // SAFETY: the `batch` member is the one filled in above and written by the kernel;
    // every bit pattern is a valid integer.
    let took = unsafe { attr.batch.count };
    if took != wanted {
        return Err(SyscallError {
            call,
            io_error: io::Error::other(format!("took {took} of {wanted} elements")),
        }
        .into());
    }
    Ok(())
}

/// Writes `keys[i]` → `values[i]` into `map` for every `i`, in one call.
///
/// The kernel copies elements of the map's key and value sizes from the slices; aya
/// checked those sizes against `K` and `V` when it made `map`.
pub(super) fn update<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    keys: &[K],
    values: &[V],
) -> Result<(), MapError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    // SAFETY: `keys` and `values` hold `keys.len()` elements each, of the map's key and
    // value sizes (aya checked `K` and `V` against the map when it made `map`).
    unsafe {
        run(
            bpf_cmd::BPF_MAP_UPDATE_BATCH,
            "bpf_map_update_batch",
            map.map(),
            keys.as_ptr() as u64,
            values.as_ptr() as u64,
            keys.len(),
        )
    }
}

/// Deletes every key of `keys` (each must be present) from `map`, in one call.
pub(super) fn delete<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    keys: &[K],
) -> Result<(), MapError> {
    // SAFETY: `keys` holds `keys.len()` elements of the map's key size (checked by aya
    // as above); a delete reads no values.
    unsafe {
        run(
            bpf_cmd::BPF_MAP_DELETE_BATCH,
            "bpf_map_delete_batch",
            map.map(),
            keys.as_ptr() as u64,
            0,
            keys.len(),
        )
    }
}

/// Writes `values[i]` at index `i` of the array `map`, in one call.
pub(super) fn set_array<V: Pod>(map: &Map, values: &[V]) -> Result<(), MapError> {
    // The conversion checks the kind and the value size; the match only reaches the
    // descriptor, which aya's `Array` does not hand out.
    Array::<&MapData, V>::try_from(map)?;
    let Map::Array(data) = map else {
        unreachable!("the conversion accepted only an array");
    };
    let indices: Vec<u32> = (0..).take(values.len()).collect();
    // SAFETY: `indices` and `values` hold `values.len()` elements each, of an array's key
    // size (`u32`) and of its value size (checked by the conversion above).
    unsafe {
        run(
            bpf_cmd::BPF_MAP_UPDATE_BATCH,
            "bpf_map_update_batch",
            data,
            indices.as_ptr() as u64,
            values.as_ptr() as u64,
            values.len(),
        )
    }
}

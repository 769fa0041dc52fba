//! XDP's verdict cache (`XDP_VERDICTS`) from userspace: emptied when generation numbering
//! starts over, so that no entry kept under an earlier generation `g` can answer under a
//! new generation with the same number.

use enforcer_common::maps::{XDP_VERDICT_BITS, XDP_VERDICT_BYTES, XDP_VERDICTS};

use super::{LoaderError, MapSet, counters::zero_per_cpu};

/// Zeroes every entry of the cache on every CPU (generation 0 matches no run).
pub(super) fn clear(ebpf: &mut impl MapSet) -> Result<(), LoaderError> {
    zero_per_cpu(
        ebpf,
        XDP_VERDICTS,
        0..1 << XDP_VERDICT_BITS,
        [0u8; XDP_VERDICT_BYTES],
    )
}

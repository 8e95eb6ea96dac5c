//! SplitMix64, the policy's only source of draws (seeded, never global), and its finaliser,
//! which consistent hashing uses to mix a key with a target.

/// The next draw of a SplitMix64 generator whose state is `state`.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    finish(*state)
}

/// SplitMix64's finaliser: every input bit moves every output bit.
pub(crate) fn finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

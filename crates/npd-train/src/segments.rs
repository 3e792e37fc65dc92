//! The attention plan of a packed sequence: which segments share an
//! attention call, and where each token's output lands.

use std::collections::BTreeMap;

use tch::{Device, Tensor};

/// How the segments of a packed sequence are grouped for attention:
/// segments of similar length (see [`bucket`]) share one batched attention
/// call, each right-padded to its group's length. Padding comes after a segment's
/// tokens, so under causal attention no real token sees it, and its
/// outputs are dropped; a few padded positions cost less than one more
/// small attention call per distinct length.
pub(crate) struct SegmentPlan {
    /// `(token indices, segments, length)` per group; a padding slot
    /// repeats token 0 (its output is never read).
    pub(crate) groups: Vec<(Tensor, i64, i64)>,
    /// Row of the groups' concatenated output holding each token.
    pub(crate) gather: Tensor,
}

/// The length a segment of `len` tokens is padded to for attention. Short
/// segments (under [`BUCKET_BELOW`] tokens) round up to a multiple of 8:
/// their attention calls are cheap, so fewer of them pays for the padding.
/// Longer ones keep their length: their calls cost more than a call's
/// overhead, and padding would add to every one.
fn bucket(len: usize) -> usize {
    if len < BUCKET_BELOW {
        len.div_ceil(8) * 8
    } else {
        len
    }
}

/// Segments shorter than this share attention calls by length bucket.
const BUCKET_BELOW: usize = 128;

impl SegmentPlan {
    pub(crate) fn new(lengths: &[usize], device: Device) -> Self {
        // (start, len) of the segments of each bucket.
        let mut by_bucket: BTreeMap<usize, Vec<(i64, usize)>> = BTreeMap::new();
        let mut start = 0i64;
        for &len in lengths {
            by_bucket.entry(bucket(len)).or_default().push((start, len));
            start += len as i64;
        }
        let mut gather = vec![0i64; start as usize];
        let mut row = 0i64;
        let groups = by_bucket
            .into_iter()
            .map(|(width, segments)| {
                let mut idx = Vec::with_capacity(segments.len() * width);
                for (s0, len) in &segments {
                    for j in 0..width as i64 {
                        if j < *len as i64 {
                            gather[(s0 + j) as usize] = row;
                            idx.push(s0 + j);
                        } else {
                            idx.push(0);
                        }
                        row += 1;
                    }
                }
                let n = segments.len() as i64;
                (Tensor::from_slice(&idx).to_device(device), n, width as i64)
            })
            .collect();
        let gather = Tensor::from_slice(&gather).to_device(device);
        Self { groups, gather }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attention_buckets_pad_little() {
        for len in 1..2000 {
            let b = super::bucket(len);
            assert!(b >= len && b - len < 8, "{len} -> {b}");
        }
        assert_eq!(
            (super::bucket(45), super::bucket(50), super::bucket(300)),
            (48, 56, 300)
        );
    }
}

//! Laying samples into one packed row.

use npd_core::{PAD_SEGMENT, PackedRow, RowPolicy, RowTopK, Segment, TokenId, TrainSample};

/// Builds [`PackedRow`]s of a fixed capacity.
#[derive(Debug, Clone, Copy)]
pub struct RowLayout {
    /// Tokens per row.
    pub capacity: usize,
    /// Token id written into padding positions.
    pub pad_id: TokenId,
    /// `Some(k)` when samples carry teacher top-k targets with `k` entries.
    pub topk: Option<usize>,
    /// Whether samples carry policy-gradient targets.
    pub policy: bool,
}

impl RowLayout {
    /// Lays `samples` back to back into one row, then padding.
    ///
    /// The caller guarantees what [`crate::prepare`] checks: each sample is
    /// valid, the lengths sum to at most `capacity`, and the samples carry
    /// top-k targets with `k` entries exactly when `self.topk` is `Some(k)`.
    pub fn build<'a>(&self, samples: impl IntoIterator<Item = &'a TrainSample>) -> PackedRow {
        let cap = self.capacity;
        let mut row = PackedRow {
            tokens: vec![self.pad_id; cap],
            positions: vec![0; cap],
            segment_ids: vec![PAD_SEGMENT; cap],
            loss_mask: vec![false; cap],
            weights: vec![0.0; cap],
            topk: self.topk.map(|k| RowTopK {
                k,
                ids: vec![0; cap * k],
                logprobs: vec![f32::NEG_INFINITY; cap * k],
                tail_logprob: vec![f32::NEG_INFINITY; cap],
            }),
            policy: self.policy.then(|| RowPolicy {
                behaviour_logprobs: vec![0.0; cap],
                advantages: vec![0.0; cap],
                reference_logprobs: None,
            }),
            segments: Vec::new(),
        };
        let mut start = 0;
        for sample in samples {
            let len = sample.tokens.len();
            let end = start + len;
            assert!(end <= cap, "samples overflow a row of {cap} tokens");
            let seg = row.segments.len() as u32;
            row.tokens[start..end].copy_from_slice(&sample.tokens);
            for (p, pos) in row.positions[start..end].iter_mut().enumerate() {
                *pos = p as u32;
            }
            row.segment_ids[start..end].fill(seg);

            // Response tokens, except a segment's first token, are targets.
            let resp = start + sample.prompt_len;
            let first_target = resp.max(start + 1);
            row.loss_mask[first_target..end].fill(true);
            match &sample.weights {
                Some(w) => row.weights[resp..end].copy_from_slice(w),
                None => row.weights[resp..end].fill(1.0),
            }
            row.weights[start..first_target].fill(0.0);

            if let (Some(dst), Some(src)) = (&mut row.topk, &sample.topk) {
                let k = dst.k;
                dst.ids[resp * k..end * k].copy_from_slice(&src.ids);
                dst.logprobs[resp * k..end * k].copy_from_slice(&src.logprobs);
                dst.tail_logprob[resp..end].copy_from_slice(&src.tail_logprob);
            }
            if let (Some(dst), Some(src)) = (&mut row.policy, &sample.policy) {
                dst.behaviour_logprobs[resp..end].copy_from_slice(&src.behaviour_logprobs);
                dst.advantages[resp..end].copy_from_slice(&src.advantages);
                if let Some(r) = &src.reference_logprobs {
                    dst.reference_logprobs.get_or_insert_with(|| vec![0.0; cap])[resp..end]
                        .copy_from_slice(r);
                }
                // A segment's first token is no target.
                dst.advantages[start..first_target].fill(0.0);
            }
            row.segments.push(Segment {
                sample_id: sample.id,
                start,
                len,
                prompt_len: sample.prompt_len,
            });
            start = end;
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npd_core::{SampleId, TopKTargets};

    fn sample(id: u64, prompt_len: usize, len: usize) -> TrainSample {
        let n = len - prompt_len;
        TrainSample {
            id: SampleId(id),
            tokens: (0..len as u32).map(|t| 100 * id as u32 + t).collect(),
            prompt_len,
            weights: Some((0..n).map(|i| i as f32 + 0.5).collect()),
            topk: Some(TopKTargets {
                k: 2,
                ids: (0..2 * n as u32).map(|i| 1000 * id as u32 + i).collect(),
                logprobs: vec![-0.25; 2 * n],
                tail_logprob: vec![-3.0; n],
            }),
            policy: Some(npd_core::PolicyTargets {
                behaviour_logprobs: (0..n).map(|i| -0.1 * (i + 1) as f32).collect(),
                advantages: vec![id as f32; n],
                reference_logprobs: Some(vec![-1.0; n]),
            }),
        }
    }

    #[test]
    fn lays_out_two_segments_and_padding() {
        let layout = RowLayout {
            capacity: 10,
            pad_id: 0,
            topk: Some(2),
            policy: true,
        };
        let a = sample(1, 2, 4);
        let b = sample(2, 0, 3);
        let row = layout.build([&a, &b]);
        assert_eq!(row.tokens, vec![100, 101, 102, 103, 200, 201, 202, 0, 0, 0]);
        assert_eq!(row.positions, vec![0, 1, 2, 3, 0, 1, 2, 0, 0, 0]);
        let p = PAD_SEGMENT;
        assert_eq!(row.segment_ids, vec![0, 0, 0, 0, 1, 1, 1, p, p, p]);
        let mask: Vec<u8> = row.loss_mask.iter().map(|&m| m as u8).collect();
        // Sample 1: prompt 2 → targets at 2, 3. Sample 2: no prompt → the
        // segment's first token is not a target.
        assert_eq!(mask, vec![0, 0, 1, 1, 0, 1, 1, 0, 0, 0]);
        assert_eq!(
            row.weights,
            vec![0.0, 0.0, 0.5, 1.5, 0.0, 1.5, 2.5, 0.0, 0.0, 0.0]
        );
        let t = row.topk.as_ref().unwrap();
        assert_eq!(&t.ids[4..8], &[1000, 1001, 1002, 1003]);
        assert_eq!(&t.ids[8..14], &[2000, 2001, 2002, 2003, 2004, 2005]);
        assert_eq!(t.tail_logprob[1], f32::NEG_INFINITY);
        assert_eq!(t.tail_logprob[2], -3.0);
        let p = row.policy.as_ref().unwrap();
        assert_eq!(
            p.advantages,
            vec![0.0, 0.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(&p.behaviour_logprobs[2..4], &[-0.1, -0.2]);
        assert_eq!(&p.behaviour_logprobs[5..7], &[-0.2, -0.3]);
        let r = p.reference_logprobs.as_ref().unwrap();
        assert_eq!((r[3], r[7]), (-1.0, 0.0));
        assert_eq!(row.cu_seqlens(), vec![0, 4, 7]);
        assert_eq!(row.used(), 7);
        assert_eq!(row.targets(), 4);
    }
}

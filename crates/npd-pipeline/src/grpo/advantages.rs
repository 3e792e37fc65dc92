//! GRPO's group arithmetic: advantages from a group's rewards, and the
//! groups that carry no signal.

/// How a group's centred rewards are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdvantageScale {
    /// Divide by the group's standard deviation (GRPO).
    #[default]
    GroupStd,
    /// Centre only (Dr. GRPO).
    None,
}

/// Added to the standard deviation before dividing by it.
const STD_EPS: f64 = 1e-6;

/// The advantages of one group's rewards, in order; `None` when every
/// reward is equal (the group carries no signal and is dropped) or the
/// group has fewer than two members.
pub fn group_advantages(rewards: &[f64], scale: AdvantageScale) -> Option<Vec<f64>> {
    if rewards.len() < 2 || rewards.iter().any(|r| !r.is_finite()) {
        return None;
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    if rewards.iter().all(|r| (r - mean).abs() <= 1e-12) {
        return None;
    }
    let centred = rewards.iter().map(|r| r - mean);
    Some(match scale {
        AdvantageScale::None => centred.collect(),
        AdvantageScale::GroupStd => {
            let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
            let std = var.sqrt() + STD_EPS;
            centred.map(|a| a / std).collect()
        }
    })
}

/// Groups kept and dropped from a batch of groups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupBatch {
    /// Per kept group: its index in the input and its advantages.
    pub kept: Vec<(usize, Vec<f64>)>,
    /// Groups dropped because every reward was equal.
    pub dropped_equal: usize,
}

/// The advantages of every group, the equal-reward groups dropped and
/// counted.
pub fn batch_advantages(groups: &[Vec<f64>], scale: AdvantageScale) -> GroupBatch {
    let mut batch = GroupBatch::default();
    for (i, g) in groups.iter().enumerate() {
        match group_advantages(g, scale) {
            Some(a) => batch.kept.push((i, a)),
            None => batch.dropped_equal += 1,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_sum_to_zero_and_scale_as_specified() {
        let rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let centred = group_advantages(&rewards, AdvantageScale::None).unwrap();
        assert!(centred.iter().sum::<f64>().abs() < 1e-12);
        assert!((centred[0] - 0.625).abs() < 1e-12 && (centred[1] + 0.375).abs() < 1e-12);
        let scaled = group_advantages(&rewards, AdvantageScale::GroupStd).unwrap();
        assert!(scaled.iter().sum::<f64>().abs() < 1e-9);
        // Unit variance (up to the epsilon).
        let var = scaled.iter().map(|a| a * a).sum::<f64>() / rewards.len() as f64;
        assert!((var - 1.0).abs() < 1e-4, "{var}");
        let std = (0.625f64 * 0.375).sqrt();
        assert!((scaled[0] - 0.625 / (std + STD_EPS)).abs() < 1e-12);
    }

    #[test]
    fn a_group_of_equal_rewards_is_dropped_and_counted() {
        let groups = vec![
            vec![1.0; 4],
            vec![0.0, 1.0, 0.0, 0.0],
            vec![0.0; 4],
            vec![0.5],
        ];
        let b = batch_advantages(&groups, AdvantageScale::GroupStd);
        assert_eq!(b.dropped_equal, 3);
        assert_eq!(b.kept.len(), 1);
        assert_eq!(b.kept[0].0, 1);
        assert_eq!(
            group_advantages(&[1.0, f64::NAN], AdvantageScale::None),
            None
        );
    }
}

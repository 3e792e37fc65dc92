//! The filter score of a sample: Δ-IFD (difference or ratio) or staleness.

use rayon::prelude::*;

use crate::config::{DeltaForm, IfdConvention};
use npd_core::traits::FilterInput;
use npd_core::{DropReason, Error, ResponseLogProbs, Result, SampleId};

use crate::ifd::{IfdTerms, ifd, mean_nll};

/// Per-token log-probs of one response under one model: conditioned on the
/// prompt, and alone.
#[derive(Debug, Clone, Copy)]
pub struct TermSlices<'a> {
    /// `log p(y_i | x, y_<i)`.
    pub conditioned: &'a [f32],
    /// `log p(y_i | y_<i)`.
    pub alone: &'a [f32],
}

impl<'a> From<&'a ResponseLogProbs> for TermSlices<'a> {
    fn from(r: &'a ResponseLogProbs) -> Self {
        Self {
            conditioned: &r.conditioned,
            alone: &r.alone,
        }
    }
}

impl TermSlices<'_> {
    fn ifd(self, convention: IfdConvention) -> Result<f64, DropReason> {
        IfdTerms::from_logprobs(self.conditioned, self.alone).map(|t| ifd(t, convention))
    }
}

/// How a sample's score is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaScore {
    /// IFD convention.
    pub convention: IfdConvention,
    /// Score form.
    pub form: DeltaForm,
}

impl DeltaScore {
    /// Whether the form needs the generating snapshot's log-probs.
    pub fn needs_snapshot(&self) -> bool {
        self.form == DeltaForm::Staleness
    }

    /// Score of one sample.
    ///
    /// - [`DeltaForm::Difference`]: `IFD_teacher - IFD_student`;
    /// - [`DeltaForm::Ratio`]: `IFD_teacher / IFD_student`;
    /// - [`DeltaForm::Staleness`]: `IFD_student - IFD_snapshot` (the teacher
    ///   is not used; a missing snapshot counts as a length mismatch);
    /// - [`DeltaForm::ConditionedGap`]: `s_teacher(y|x) - s_student(y|x)`
    ///   (the response-alone arrays are not used and may be empty here;
    ///   [`LogProbColumns`] still expects them aligned).
    pub fn score(
        &self,
        teacher: TermSlices<'_>,
        student: TermSlices<'_>,
        snapshot: Option<TermSlices<'_>>,
    ) -> Result<f64, DropReason> {
        let v = match self.form {
            DeltaForm::Difference => {
                teacher.ifd(self.convention)? - student.ifd(self.convention)?
            }
            DeltaForm::Ratio => teacher.ifd(self.convention)? / student.ifd(self.convention)?,
            DeltaForm::Staleness => {
                let s = student.ifd(self.convention)?;
                let snap = snapshot.ok_or(DropReason::LengthMismatch)?;
                if snap.conditioned.len() != student.conditioned.len() {
                    return Err(DropReason::LengthMismatch);
                }
                s - snap.ifd(self.convention)?
            }
            DeltaForm::ConditionedGap => {
                let (t, s) = (teacher.conditioned, student.conditioned);
                if s.is_empty() {
                    return Err(DropReason::EmptyResponse);
                }
                if t.len() != s.len() {
                    return Err(DropReason::LengthMismatch);
                }
                mean_nll(t) - mean_nll(s)
            }
        };
        if v.is_finite() {
            Ok(v)
        } else {
            Err(DropReason::NonFiniteScore)
        }
    }

    /// Score of a [`FilterInput`].
    pub fn score_input(&self, input: &FilterInput) -> Result<f64, DropReason> {
        self.score(
            (&input.teacher).into(),
            (&input.student).into(),
            input.snapshot.as_ref().map(Into::into),
        )
    }

    /// Scores a whole pool in parallel. Fails only when the pool itself is
    /// malformed (see [`LogProbColumns::validate`]); malformed samples get
    /// their [`DropReason`].
    pub fn score_pool(&self, pool: &LogProbColumns) -> Result<Vec<Result<f64, DropReason>>> {
        pool.validate()?;
        if self.needs_snapshot() && pool.snapshot.is_none() {
            return Err(Error::invalid(
                "filter.form = \"staleness\"",
                "needs the generating snapshot's log-probs, but the pool has none",
            ));
        }
        Ok((0..pool.len())
            .into_par_iter()
            .with_min_len(256)
            .map(|i| {
                if let Some(Some(reason)) = pool.premarked.get(i) {
                    return Err(*reason);
                }
                let (t, s, snap) = pool.sample(i);
                self.score(t, s, snap)
            })
            .collect())
    }
}

/// Log-probs of a pool laid out in flat columns: sample `i`'s response
/// tokens are `offsets[i]..offsets[i + 1]` of every column. One allocation
/// per column instead of four per sample keeps scoring memory-bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogProbColumns {
    /// Sample ids, one per sample.
    pub ids: Vec<SampleId>,
    /// Start of each sample's tokens, plus the end (`len() + 1` entries).
    pub offsets: Vec<usize>,
    /// Teacher log-probs, conditioned and alone.
    pub teacher: [Vec<f32>; 2],
    /// Student log-probs, conditioned and alone.
    pub student: [Vec<f32>; 2],
    /// Generating snapshot's log-probs, for the staleness form.
    pub snapshot: Option<[Vec<f32>; 2]>,
    /// Samples [`LogProbColumns::push`] found malformed, with the reason.
    premarked: Vec<Option<DropReason>>,
}

impl LogProbColumns {
    /// An empty pool; `with_snapshot` adds the snapshot columns.
    pub fn new(with_snapshot: bool) -> Self {
        Self {
            offsets: vec![0],
            snapshot: with_snapshot.then(Default::default),
            ..Default::default()
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the pool has no samples.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends a sample. A sample whose arrays differ in length is stored
    /// as NaNs of the student's length and scoring drops it as a length
    /// mismatch.
    pub fn push(&mut self, input: &FilterInput) {
        let n = input.student.conditioned.len();
        let aligned = [&input.teacher, &input.student]
            .into_iter()
            .chain(input.snapshot.as_ref())
            .all(|r| r.conditioned.len() == n && r.alone.len() == n)
            && (self.snapshot.is_none() || input.snapshot.is_some());
        let put = |col: &mut Vec<f32>, src: &[f32]| {
            if aligned {
                col.extend_from_slice(src);
            } else {
                col.extend(std::iter::repeat_n(f32::NAN, n));
            }
        };
        put(&mut self.teacher[0], &input.teacher.conditioned);
        put(&mut self.teacher[1], &input.teacher.alone);
        put(&mut self.student[0], &input.student.conditioned);
        put(&mut self.student[1], &input.student.alone);
        if let Some(snap) = &mut self.snapshot {
            let empty = ResponseLogProbs::default();
            let src = input.snapshot.as_ref().unwrap_or(&empty);
            put(&mut snap[0], &src.conditioned);
            put(&mut snap[1], &src.alone);
        }
        self.premarked.resize(self.ids.len(), None);
        self.premarked
            .push((!aligned).then_some(DropReason::LengthMismatch));
        self.ids.push(input.id);
        self.offsets
            .push(self.offsets.last().copied().unwrap_or(0) + n);
    }

    /// Checks that offsets are monotone and every column covers them.
    pub fn validate(&self) -> Result<()> {
        if self.offsets.len() != self.ids.len() + 1 || self.offsets.first() != Some(&0) {
            return Err(Error::invalid(
                "log-prob pool",
                format!(
                    "{} offsets for {} samples: expected one more offset than samples, starting at 0",
                    self.offsets.len(),
                    self.ids.len()
                ),
            ));
        }
        if let Some(i) = self.offsets.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::invalid(
                "log-prob pool",
                format!("offsets decrease at sample {i}"),
            ));
        }
        let total = *self.offsets.last().unwrap_or(&0);
        let columns = self
            .teacher
            .iter()
            .chain(&self.student)
            .chain(self.snapshot.iter().flatten());
        for (c, col) in columns.enumerate() {
            if col.len() != total {
                return Err(Error::invalid(
                    "log-prob pool",
                    format!(
                        "column {c} has {} entries, the offsets cover {total}",
                        col.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Sample `i`'s slices: teacher, student, snapshot.
    pub fn sample(&self, i: usize) -> (TermSlices<'_>, TermSlices<'_>, Option<TermSlices<'_>>) {
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        fn pair(cols: &[Vec<f32>; 2], a: usize, b: usize) -> TermSlices<'_> {
            TermSlices {
                conditioned: &cols[0][a..b],
                alone: &cols[1][a..b],
            }
        }
        (
            pair(&self.teacher, a, b),
            pair(&self.student, a, b),
            self.snapshot.as_ref().map(|s| pair(s, a, b)),
        )
    }

    /// Bytes of log-probs scoring reads.
    pub fn bytes(&self) -> usize {
        let cols = 4 + if self.snapshot.is_some() { 2 } else { 0 };
        cols * self.offsets.last().copied().unwrap_or(0) * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(c: &[f32], a: &[f32]) -> ResponseLogProbs {
        ResponseLogProbs {
            conditioned: c.to_vec(),
            alone: a.to_vec(),
        }
    }

    fn input(id: u64) -> FilterInput {
        FilterInput {
            id: SampleId(id),
            // teacher IFD 1.0 / 2.0 = 0.5; student IFD 0.5 / 2.0 = 0.25.
            teacher: resp(&[-1.0, -1.0], &[-2.0, -2.0]),
            student: resp(&[-0.5, -0.5], &[-2.0, -2.0]),
            // snapshot IFD 1.0 / 4.0 = 0.25 → staleness 0.
            snapshot: Some(resp(&[-1.0, -1.0], &[-4.0, -4.0])),
        }
    }

    #[test]
    fn forms_follow_their_definitions() {
        let i = input(0);
        let score = |form| {
            DeltaScore {
                convention: IfdConvention::LossRatio,
                form,
            }
            .score_input(&i)
            .unwrap()
        };
        assert!((score(DeltaForm::Difference) - 0.25).abs() < 1e-12);
        assert!((score(DeltaForm::Ratio) - 2.0).abs() < 1e-12);
        assert!(score(DeltaForm::Staleness).abs() < 1e-12);
        // Conditioned gap: s_teacher(y|x) 1.0 - s_student(y|x) 0.5.
        assert!((score(DeltaForm::ConditionedGap) - 0.5).abs() < 1e-12);
        // It needs no response-alone log-probs.
        let mut bare = input(1);
        bare.teacher.alone.clear();
        bare.student.alone.clear();
        let gap = DeltaScore {
            convention: IfdConvention::LossRatio,
            form: DeltaForm::ConditionedGap,
        };
        assert!((gap.score_input(&bare).unwrap() - 0.5).abs() < 1e-12);
        let difference = DeltaScore {
            form: DeltaForm::Difference,
            ..gap
        };
        assert_eq!(
            difference.score_input(&bare),
            Err(DropReason::LengthMismatch)
        );
    }

    #[test]
    fn pool_scores_equal_per_sample_scores() {
        let mut pool = LogProbColumns::new(true);
        let mut inputs = vec![input(0), input(1), input(2)];
        inputs[1].teacher.conditioned[0] = -3.0;
        inputs[2].student.alone.pop();
        for i in &inputs {
            pool.push(i);
        }
        let d = DeltaScore {
            convention: IfdConvention::PerplexityRatio,
            form: DeltaForm::Difference,
        };
        let got = d.score_pool(&pool).unwrap();
        let want: Vec<_> = inputs.iter().map(|i| d.score_input(i)).collect();
        assert_eq!(got, want);
        assert_eq!(want[2], Err(DropReason::LengthMismatch));
    }

    #[test]
    fn staleness_without_snapshot_is_an_error() {
        let mut pool = LogProbColumns::new(false);
        pool.push(&input(0));
        let d = DeltaScore {
            convention: IfdConvention::LossRatio,
            form: DeltaForm::Staleness,
        };
        assert!(d.score_pool(&pool).is_err());
    }

    #[test]
    fn corrupt_pool_is_an_error() {
        let mut pool = LogProbColumns::new(false);
        pool.push(&input(0));
        pool.student[1].pop();
        assert!(
            pool.validate()
                .unwrap_err()
                .to_string()
                .contains("column 3")
        );
    }
}

//! The loss targets of packed or padded rows, gathered into tensors: which
//! hidden state predicts each target, the target tokens and weights, and
//! the teacher's top-k or the policy targets the rows carry.

use tch::{Device, Tensor};

use npd_core::{Error, PackedRow, Result};

/// Tensors of one micro-batch's loss targets.
pub(crate) struct Targets {
    /// Row of the hidden-state tensor that predicts each target.
    pub rows: Tensor,
    /// The target tokens.
    pub tokens: Tensor,
    /// Their loss weights.
    pub weights: Tensor,
    /// The teacher's top-k ids, log-probs and tail, when the rows carry them.
    pub topk: Option<(Tensor, Tensor, Tensor)>,
    /// Behaviour log-probs, advantages and reference log-probs (when
    /// given), when the rows carry policy targets.
    pub policy: Option<(Tensor, Tensor, Option<Tensor>)>,
}

impl Targets {
    /// Number of targets.
    pub fn len(&self) -> usize {
        self.tokens.size()[0] as usize
    }

    /// Targets `start..start + len` (views, no copy).
    pub fn narrow(&self, start: usize, len: usize) -> Targets {
        let (s, n) = (start as i64, len as i64);
        let cut = |t: &Tensor| t.narrow(0, s, n);
        Targets {
            rows: cut(&self.rows),
            tokens: cut(&self.tokens),
            weights: cut(&self.weights),
            topk: (self.topk.as_ref()).map(|(i, l, t)| (cut(i), cut(l), cut(t))),
            policy: (self.policy.as_ref()).map(|(b, a, r)| (cut(b), cut(a), r.as_ref().map(cut))),
        }
    }
}

/// Loss targets gathered from rows, before they become tensors.
#[derive(Default)]
struct TargetLists {
    rows: Vec<i64>,
    tokens: Vec<i64>,
    weights: Vec<f32>,
    topk_ids: Vec<i64>,
    topk_logprobs: Vec<f32>,
    tails: Vec<f32>,
    behaviour: Vec<f32>,
    advantages: Vec<f32>,
    reference: Vec<f32>,
}

/// Appends a row's targets, with `offset(t)` the hidden-state row that
/// predicts token `t` of the row.
fn push_targets(row: &PackedRow, offset: impl Fn(usize) -> i64, out: &mut TargetLists) {
    for t in (0..row.capacity()).filter(|&t| row.loss_mask[t]) {
        out.rows.push(offset(t - 1));
        out.tokens.push(row.tokens[t] as i64);
        out.weights.push(row.weights[t]);
        if let Some(top) = &row.topk {
            let k = top.k;
            out.topk_ids
                .extend(top.ids[t * k..(t + 1) * k].iter().map(|&i| i as i64));
            out.topk_logprobs
                .extend_from_slice(&top.logprobs[t * k..(t + 1) * k]);
            out.tails.push(top.tail_logprob[t]);
        }
        if let Some(p) = &row.policy {
            out.behaviour.push(p.behaviour_logprobs[t]);
            out.advantages.push(p.advantages[t]);
            if let Some(r) = &p.reference_logprobs {
                out.reference.push(r[t]);
            }
        }
    }
}

fn finish_targets(rows: &[PackedRow], v: TargetLists, device: Device) -> Result<Targets> {
    let k = match rows.first().and_then(|r| r.topk.as_ref()) {
        Some(t) => {
            if rows
                .iter()
                .any(|r| r.topk.as_ref().map(|x| x.k) != Some(t.k))
            {
                return Err(Error::invalid(
                    "training rows",
                    "rows disagree on teacher top-k presence or k",
                ));
            }
            Some(t.k as i64)
        }
        None => None,
    };
    let policy = rows.first().is_some_and(|r| r.policy.is_some());
    if rows.iter().any(|r| r.policy.is_some() != policy) {
        return Err(Error::invalid(
            "training rows",
            "rows disagree on policy targets: a step trains one objective",
        ));
    }
    let n = v.rows.len() as i64;
    let dev = |t: Tensor| t.to_device(device);
    Ok(Targets {
        rows: dev(Tensor::from_slice(&v.rows)),
        tokens: dev(Tensor::from_slice(&v.tokens)),
        weights: dev(Tensor::from_slice(&v.weights)),
        topk: k.map(|k| {
            (
                dev(Tensor::from_slice(&v.topk_ids).view([n, k])),
                dev(Tensor::from_slice(&v.topk_logprobs).view([n, k])),
                dev(Tensor::from_slice(&v.tails)),
            )
        }),
        policy: policy.then(|| {
            let reference = (v.reference.len() == v.behaviour.len() && !v.reference.is_empty())
                .then(|| dev(Tensor::from_slice(&v.reference)));
            (
                dev(Tensor::from_slice(&v.behaviour)),
                dev(Tensor::from_slice(&v.advantages)),
                reference,
            )
        }),
    })
}

/// Used tokens of all rows as one packed sequence.
pub(crate) fn gather_packed(
    rows: &[PackedRow],
    device: Device,
) -> Result<(Tensor, Tensor, Vec<usize>, Targets)> {
    let mut tokens = Vec::new();
    let mut positions = Vec::new();
    let mut lengths = Vec::new();
    let mut v = TargetLists::default();
    for row in rows {
        let used = row.used();
        let offset = tokens.len() as i64;
        tokens.extend(row.tokens[..used].iter().map(|&t| t as i64));
        positions.extend(row.positions[..used].iter().map(|&p| p as i64));
        lengths.extend(row.segments.iter().map(|s| s.len));
        push_targets(row, |t| offset + t as i64, &mut v);
    }
    let targets = finish_targets(rows, v, device)?;
    Ok((
        Tensor::from_slice(&tokens).to_device(device),
        Tensor::from_slice(&positions).to_device(device),
        lengths,
        targets,
    ))
}

/// Rows as a `[rows, capacity]` batch; each row must hold one sample.
pub(crate) fn gather_padded(
    rows: &[PackedRow],
    device: Device,
) -> Result<(Tensor, Tensor, Targets)> {
    let cap = rows.first().map_or(0, PackedRow::capacity);
    let mut tokens = Vec::with_capacity(rows.len() * cap);
    let mut positions = Vec::with_capacity(rows.len() * cap);
    let mut v = TargetLists::default();
    for (r, row) in rows.iter().enumerate() {
        if row.segments.len() != 1 || row.capacity() != cap {
            return Err(Error::invalid(
                format!("padded row {r}"),
                format!(
                    "holds {} samples in {} tokens; a padded batch needs one sample per row \
                     and equal capacities ({cap})",
                    row.segments.len(),
                    row.capacity()
                ),
            ));
        }
        tokens.extend(row.tokens.iter().map(|&t| t as i64));
        positions.extend((0..cap as i64).map(|p| p.min(row.used() as i64)));
        let base = (r * cap) as i64;
        push_targets(row, |t| base + t as i64, &mut v);
    }
    let targets = finish_targets(rows, v, device)?;
    let b = rows.len() as i64;
    Ok((
        Tensor::from_slice(&tokens)
            .view([b, cap as i64])
            .to_device(device),
        Tensor::from_slice(&positions)
            .view([b, cap as i64])
            .to_device(device),
        targets,
    ))
}

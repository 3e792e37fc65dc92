//! Scoring against log-softmax of transformers' reference logits.

use std::path::PathBuf;

use npd_core::TokenId;
use npd_core::traits::{ScoreOptions, ScoreRequest, Scorer, SequenceScores};
use npd_train::Llama;
use npd_train::score::ModelScorer;
use npd_train::tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama-mha-untied-sharded")
}

fn reference() -> Vec<(Vec<TokenId>, Tensor)> {
    let t: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture().join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    (0..3)
        .map(|i| {
            let ids = Vec::<i64>::try_from(&t[&format!("input.{i}")]).unwrap();
            (
                ids.iter().map(|&x| x as TokenId).collect(),
                t[&format!("logits.{i}")].shallow_clone(),
            )
        })
        .collect()
}

#[test]
fn logprobs_and_topk_match_reference_log_softmax() {
    let model = Llama::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let refs = reference();
    let seqs: Vec<(&[TokenId], usize)> = refs.iter().map(|(ids, _)| (ids.as_slice(), 2)).collect();
    let mut scorer = ModelScorer::new(&model);
    // Force several chunks and passes: results must not depend on chunking.
    let big = scorer.response_scores(&seqs, Some(5)).unwrap();
    scorer.max_logits = 96 * 3;
    scorer.max_tokens_per_pass = 10;
    let small = scorer.response_scores(&seqs, Some(5)).unwrap();
    for ((ids, logits), ((lp, top), (lp2, top2))) in refs.iter().zip(big.iter().zip(&small)) {
        let lsm = logits.log_softmax(-1, Kind::Float);
        let top = top.as_ref().unwrap();
        let (vals, idx) = lsm.topk(5, -1, true, true);
        for (j, i) in (2..ids.len()).enumerate() {
            let want = lsm.double_value(&[i as i64 - 1, ids[i] as i64]);
            assert!((lp[j] as f64 - want).abs() < 1e-4, "{} vs {want}", lp[j]);
            assert!((lp[j] - lp2[j]).abs() < 1e-5);
            for r in 0..5 {
                assert_eq!(
                    top.ids[j * 5 + r] as i64,
                    idx.int64_value(&[i as i64 - 1, r as i64])
                );
                let v = vals.double_value(&[i as i64 - 1, r as i64]);
                assert!((top.logprobs[j * 5 + r] as f64 - v).abs() < 1e-4);
            }
            let mass: f64 = (0..5).map(|r| (top.logprobs[j * 5 + r] as f64).exp()).sum();
            assert!(((top.tail_logprob[j] as f64).exp() + mass - 1.0).abs() < 1e-4);
        }
        let top2 = top2.as_ref().unwrap();
        assert_eq!(top.ids, top2.ids);
        for (a, b) in top.logprobs.iter().zip(&top2.logprobs) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}

/// Scores `ids` (prompt of 5 tokens) with a response-alone pass after
/// `prefix`.
fn score_alone(
    scorer: &mut ModelScorer<'_>,
    ids: &[TokenId],
    prefix: Vec<TokenId>,
) -> npd_core::Result<Vec<SequenceScores>> {
    scorer.score(
        &[ScoreRequest {
            tokens: ids,
            prompt_len: 5,
        }],
        &ScoreOptions {
            topk: None,
            alone_prefix: Some(prefix),
        },
    )
}

#[test]
fn alone_pass_scores_the_response_after_the_prefix() {
    let model = Llama::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let refs = reference();
    let (ids, _) = &refs[2];
    let mut scorer = ModelScorer::new(&model);
    let out = score_alone(&mut scorer, ids, vec![1, 7]).unwrap();
    let mut alone_seq = vec![1, 7];
    alone_seq.extend_from_slice(&ids[5..]);
    let direct = scorer.response_scores(&[(&alone_seq, 2)], None).unwrap();
    assert_eq!(out[0].logprobs.alone, direct[0].0);
    assert_eq!(out[0].logprobs.conditioned.len(), ids.len() - 5);
    assert_ne!(out[0].logprobs.alone, out[0].logprobs.conditioned);
    let err = score_alone(&mut scorer, ids, vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("alone_prefix"), "{err}");
}

#[test]
fn bad_requests_are_errors() {
    let model = Llama::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let scorer = ModelScorer::new(&model);
    let ids = [1u32, 2, 3];
    let err = scorer
        .response_scores(&[(&ids, 0)], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("score request 0"), "{err}");
    assert!(scorer.response_scores(&[(&ids, 3)], None).is_err());
    let bad = [1u32, 500];
    assert!(
        scorer
            .response_scores(&[(&bad, 1)], None)
            .unwrap_err()
            .to_string()
            .contains("vocabulary")
    );
}

/// A confident teacher row: the top-1 log-prob rounds to 0 in f32, so
/// `log(1 - Σ top-k)` would cancel to -inf. The tail must still match a
/// float64 reference to 1e-3 nats, and so must the reverse KL built on it.
#[test]
fn tail_of_a_confident_row_matches_a_float64_reference() {
    use npd_train::loss::{TeacherDist, reverse_kl};
    let mut model = Llama::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    // Sharpen the output layer until the rows are nearly one-hot.
    npd_train::tch::no_grad(|| {
        let mut w = model.var_store_mut().variables()["lm_head.weight"].shallow_clone();
        let sharp = &w * 400.0;
        w.copy_(&sharp);
    });
    let ids: Vec<TokenId> = vec![1, 17, 42, 5, 60, 33, 8, 71, 90, 12, 3];
    let k = 4;
    let scores = ModelScorer::new(&model)
        .response_scores(&[(ids.as_slice(), 2)], Some(k))
        .unwrap();
    let top = scores[0].1.as_ref().unwrap();
    // The float64 reference from the same logits.
    let n = ids.len() as i64;
    let flat: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let hidden = npd_train::tch::no_grad(|| {
        model
            .forward_packed(
                &Tensor::from_slice(&flat),
                &Tensor::arange(n, (Kind::Int64, Device::Cpu)),
                &[ids.len()],
            )
            .unwrap()
    });
    let logits = npd_train::tch::no_grad(|| model.logits(&hidden)).to_kind(Kind::Double);
    let lsm = logits.log_softmax(-1, Kind::Double);
    let mut confident = 0;
    let mut worst: f64 = 0.0;
    for (j, i) in (2..ids.len()).enumerate() {
        let row = lsm.get(i as i64 - 1);
        let top_ids: Vec<i64> = (0..k).map(|r| top.ids[j * k + r] as i64).collect();
        let rest = row
            .scatter_value(0, &Tensor::from_slice(&top_ids), f64::NEG_INFINITY)
            .logsumexp([0], false)
            .double_value(&[]);
        let got = top.tail_logprob[j] as f64;
        worst = worst.max((got - rest).abs());
        if top.logprobs[j * k] == 0.0 {
            confident += 1;
            assert!(rest > -1e3, "the reference tail {rest} is finite");
        }
    }
    assert!(confident > 0, "no position was confident enough to test");
    assert!(worst < 1e-3, "tail off by {worst} nats");

    // Reverse KL on the k + 1 buckets against the same sum in float64.
    let m = (ids.len() - 2) as i64;
    let student = Tensor::randn([m, 96], (Kind::Float, Device::Cpu));
    let tids = Tensor::from_slice(&top.ids.iter().map(|&t| t as i64).collect::<Vec<_>>())
        .view([m, k as i64]);
    let tlp = Tensor::from_slice(&top.logprobs).view([m, k as i64]);
    let tail = Tensor::from_slice(&top.tail_logprob);
    let rkl = reverse_kl(
        &student,
        &TeacherDist::TopK {
            ids: &tids,
            logprobs: &tlp,
            tail: &tail,
        },
    );
    let slsm = student.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    for r in 0..m {
        let idx = tids.get(r);
        let q_top = slsm.get(r).gather(0, &idx, false);
        let q_rest = slsm
            .get(r)
            .scatter_value(0, &idx, f64::NEG_INFINITY)
            .logsumexp([0], false);
        let p_top = lsm.get(r + 1).gather(0, &idx, false);
        let p_rest = lsm
            .get(r + 1)
            .scatter_value(0, &idx, f64::NEG_INFINITY)
            .logsumexp([0], false);
        let want = (q_top.exp() * (&q_top - &p_top))
            .sum(Kind::Double)
            .double_value(&[])
            + (q_rest.exp() * (&q_rest - &p_rest)).double_value(&[]);
        let got = rkl.double_value(&[r]);
        assert!(
            (got - want).abs() < 1e-3 * want.abs().max(1.0),
            "position {r}: reverse KL {got}, float64 {want}"
        );
    }
}

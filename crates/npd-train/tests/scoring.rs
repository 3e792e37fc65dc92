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

//! The teacher's own wording of each prompt: a teacher-only system text or
//! suffix (openPangu-Embedded-7B's ` /no_think`) means the teacher scores a
//! student response after a prompt other than the one the student saw.
//! [`TeacherPrompts`] wraps a teacher [`Scorer`] and swaps the prompt part
//! of every request for the teacher's; the scores cover the response
//! positions only, so nothing else changes.

use std::collections::HashMap;
use std::sync::Arc;

use npd_core::traits::{ScoreOptions, ScoreRequest, Scorer, SequenceScores};
use npd_core::{Prompt, Result, TokenId};

/// Student prompt tokens to the teacher's tokens of the same prompt.
pub type PromptMap = Arc<HashMap<Vec<TokenId>, Vec<TokenId>>>;

/// The map from `student` prompts to `teacher` prompts (one per prompt, in
/// the same order); pairs that are equal are left out.
pub fn prompt_map(student: &[Prompt], teacher: &[Vec<TokenId>]) -> Result<PromptMap> {
    if student.len() != teacher.len() {
        return Err(npd_core::Error::invalid(
            "teacher prompts",
            format!(
                "{} teacher prompts for {} prompts: expected one per prompt",
                teacher.len(),
                student.len()
            ),
        ));
    }
    Ok(Arc::new(
        student
            .iter()
            .zip(teacher)
            .filter(|(s, t)| s.tokens != **t)
            .map(|(s, t)| (s.tokens.clone(), t.clone()))
            .collect(),
    ))
}

/// A teacher scorer that sees each prompt as the teacher words it.
pub struct TeacherPrompts<T> {
    inner: T,
    map: PromptMap,
}

impl<T> TeacherPrompts<T> {
    /// `inner` scoring after the teacher's prompts of `map` (a prompt not
    /// in it is the teacher's as is).
    pub fn new(inner: T, map: PromptMap) -> Self {
        Self { inner, map }
    }
}

impl<T: Scorer> Scorer for TeacherPrompts<T> {
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        if self.map.is_empty() {
            return self.inner.score(requests, options);
        }
        let rewritten: Vec<Option<Vec<TokenId>>> = requests
            .iter()
            .map(|r| {
                let (prompt, response) = r.tokens.split_at(r.prompt_len.min(r.tokens.len()));
                self.map
                    .get(prompt)
                    .map(|teacher| [teacher.as_slice(), response].concat())
            })
            .collect();
        let swapped: Vec<ScoreRequest<'_>> = requests
            .iter()
            .zip(&rewritten)
            .map(|(r, t)| match t {
                Some(tokens) => ScoreRequest {
                    tokens,
                    prompt_len: tokens.len() - (r.tokens.len() - r.prompt_len),
                },
                None => *r,
            })
            .collect();
        self.inner.score(&swapped, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npd_core::PromptId;
    use npd_core::ResponseLogProbs;

    /// Records what it was asked and scores each response position with
    /// the number of prompt tokens before it.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<(Vec<TokenId>, usize)>,
    }

    impl Scorer for Recorder {
        fn score(
            &mut self,
            requests: &[ScoreRequest<'_>],
            _: &ScoreOptions,
        ) -> Result<Vec<SequenceScores>> {
            Ok(requests
                .iter()
                .map(|r| {
                    self.seen.push((r.tokens.to_vec(), r.prompt_len));
                    let n = r.tokens.len() - r.prompt_len;
                    SequenceScores {
                        logprobs: ResponseLogProbs {
                            conditioned: vec![r.prompt_len as f32; n],
                            alone: Vec::new(),
                        },
                        topk: None,
                    }
                })
                .collect())
        }
    }

    #[test]
    fn the_teacher_scores_the_response_after_its_own_prompt() {
        let student = vec![
            Prompt {
                id: PromptId(0),
                tokens: vec![1, 5, 6],
            },
            Prompt {
                id: PromptId(1),
                tokens: vec![1, 7],
            },
        ];
        // The first prompt gets a two-token suffix; the second is the same.
        let map = prompt_map(&student, &[vec![1, 5, 6, 8, 9], vec![1, 7]]).unwrap();
        assert_eq!(map.len(), 1);
        let mut t = TeacherPrompts::new(Recorder::default(), map);
        let a = [1, 5, 6, 40, 41];
        let b = [1, 7, 42];
        let scores = t
            .score(
                &[
                    ScoreRequest {
                        tokens: &a,
                        prompt_len: 3,
                    },
                    ScoreRequest {
                        tokens: &b,
                        prompt_len: 2,
                    },
                ],
                &ScoreOptions::default(),
            )
            .unwrap();
        assert_eq!(t.inner.seen[0], (vec![1, 5, 6, 8, 9, 40, 41], 5));
        assert_eq!(t.inner.seen[1], (vec![1, 7, 42], 2));
        // One score per response token, whatever the prompt.
        assert_eq!(scores[0].logprobs.conditioned, [5.0, 5.0]);
        assert_eq!(scores[1].logprobs.conditioned, [2.0]);
        assert!(prompt_map(&student, &[vec![1]]).is_err());
    }
}

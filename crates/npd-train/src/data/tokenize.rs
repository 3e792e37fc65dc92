//! Records to tokens: each record's prompt as a model sees it (raw text,
//! or a conversation in the chat format with that model's system turn and
//! suffix), BOS first, over-long prompts rejected with the reason.

use npd_core::{Error, PromptId, Result, TokenId};

use super::{Example, PromptRecord};
use crate::models_config::{PromptFormat, PromptStyle};
use crate::tokenizer::Tokenizer;
use crate::tokenizer::chat::{ChatFormat, Message, Role};

/// Prompts rejected before training, with the reason.
pub type Rejected = Vec<(PromptId, String)>;

/// Tokenizes records: BOS, then the prompt text or the rendered
/// conversation. Returns the examples and the records rejected for being
/// longer than `max_tokens`, with the reason.
pub fn tokenize(
    records: &[PromptRecord],
    tokenizer: &Tokenizer,
    chat: Option<&dyn ChatFormat>,
    bos: Option<TokenId>,
    max_tokens: usize,
) -> Result<(Vec<Example>, Rejected)> {
    tokenize_styled(
        records,
        tokenizer,
        chat,
        bos,
        max_tokens,
        PromptStyle::default(),
    )
}

/// The text of `r`'s prompt as `style` says: a raw `prompt` as is, or the
/// conversation (`messages`, or `prompt` as a user turn) with the style's
/// system turn and suffix, rendered with `chat`.
fn prompt_text(
    r: &PromptRecord,
    chat: Option<&dyn ChatFormat>,
    style: PromptStyle<'_>,
) -> Result<String> {
    let styled = !style.system.is_empty() || !style.suffix.is_empty();
    let mut messages = match (&r.prompt, &r.messages, style.format) {
        (Some(p), _, PromptFormat::Raw) => {
            if styled {
                return Err(Error::invalid(
                    r.location(),
                    "is a raw `prompt` text, to which a system turn or suffix \
                     (data.*_system, data.*_suffix) cannot be added: set data.prompt_format = \
                     \"chat\" or give `messages`",
                ));
            }
            return Ok(p.clone());
        }
        (Some(p), _, PromptFormat::Chat) => vec![Message::new(Role::User, p.clone())],
        (None, Some(m), _) => m.clone(),
        (None, None, _) => return Err(Error::invalid(r.location(), "has no prompt")),
    };
    let Some(chat) = chat else {
        return Err(Error::invalid(
            r.location(),
            "is a conversation (`messages`, or data.prompt_format = \"chat\") but the model \
             has no chat format",
        ));
    };
    if !style.system.is_empty() && messages.first().is_none_or(|m| m.role != Role::System) {
        messages.insert(0, Message::new(Role::System, style.system));
    }
    if !style.suffix.is_empty() {
        let Some(last) = messages.iter_mut().rev().find(|m| m.role == Role::User) else {
            return Err(Error::invalid(
                r.location(),
                "has no user turn for data.*_suffix to extend",
            ));
        };
        last.content.push_str(style.suffix);
    }
    chat.prompt(&messages)
}

/// [`tokenize`], with each prompt as `style` says.
pub fn tokenize_styled(
    records: &[PromptRecord],
    tokenizer: &Tokenizer,
    chat: Option<&dyn ChatFormat>,
    bos: Option<TokenId>,
    max_tokens: usize,
    style: PromptStyle<'_>,
) -> Result<(Vec<Example>, Rejected)> {
    let mut examples = Vec::new();
    let mut rejected = Vec::new();
    for r in records {
        let id = PromptId(r.id.unwrap_or_default());
        let text = prompt_text(r, chat, style)?;
        let encoded = tokenizer.encode(&text)?;
        if encoded.is_empty() {
            return Err(Error::invalid(
                r.location(),
                format!(
                    "the prompt is empty (it encodes to no tokens{}); give it text or remove \
                     the record",
                    if bos.is_none() {
                        ", and the tokenizer has no BOS to start from"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut prompt: Vec<TokenId> = bos.into_iter().collect();
        prompt.extend(encoded);
        if prompt.len() > max_tokens {
            rejected.push((
                id,
                format!(
                    "prompt of {} tokens exceeds data.max_prompt_tokens = {max_tokens}",
                    prompt.len()
                ),
            ));
            continue;
        }
        let response = r
            .response
            .as_deref()
            .map(|t| tokenizer.encode(t))
            .transpose()?;
        examples.push(Example {
            id,
            prompt,
            answer: r.answer.clone(),
            response,
        });
    }
    Ok((examples, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::read_records;
    use crate::data::tests::write;
    use std::path::Path;

    #[test]
    fn each_model_sees_its_own_system_turn_and_suffix() {
        use crate::tokenizer::chat::PanguChat;
        let record = |prompt: Option<&str>, messages: Option<Vec<Message>>| PromptRecord {
            id: Some(3),
            prompt: prompt.map(str::to_string),
            messages,
            answer: None,
            response: None,
            line: Some(4),
            in_rows: false,
        };
        let question = record(Some("2+2?"), None);
        let chat = PromptStyle {
            format: PromptFormat::Chat,
            ..PromptStyle::default()
        };
        let teacher = PromptStyle {
            suffix: " /no_think",
            system: "Be exact.",
            ..chat
        };
        let pangu: Option<&dyn ChatFormat> = Some(&PanguChat);
        assert_eq!(
            prompt_text(&question, pangu, PromptStyle::default()).unwrap(),
            "2+2?"
        );
        assert_eq!(
            prompt_text(&question, pangu, chat).unwrap(),
            "[unused9]系统：[unused10][unused9]用户：2+2?[unused10][unused9]助手："
        );
        assert_eq!(
            prompt_text(&question, pangu, teacher).unwrap(),
            "[unused9]系统：Be exact.[unused10][unused9]用户：2+2? /no_think[unused10][unused9]助手："
        );
        // The suffix goes to the last user turn; a conversation's own system
        // turn is kept.
        let talk = record(
            None,
            Some(vec![
                Message::new(Role::System, "Mine."),
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "b"),
                Message::new(Role::User, "c"),
            ]),
        );
        assert_eq!(
            prompt_text(&talk, pangu, teacher).unwrap(),
            "[unused9]系统：Mine.[unused10][unused9]用户：a[unused10][unused9]助手：b[unused10]\
             [unused9]用户：c /no_think[unused10][unused9]助手："
        );
        let raw_styled = PromptStyle {
            suffix: " /no_think",
            ..PromptStyle::default()
        };
        let err = prompt_text(&question, pangu, raw_styled)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.prompt_format"), "{err}");
        let err = prompt_text(&question, None, chat).unwrap_err().to_string();
        assert!(err.contains("no chat format"), "{err}");
    }

    #[test]
    fn long_prompts_are_rejected_with_a_reason() {
        // One token per character of the alphabet, after the three specials.
        let vocab: serde_json::Map<String, serde_json::Value> = ["<unk>", "<s>", "</s>"]
            .into_iter()
            .map(String::from)
            .chain("0123456789+=".chars().map(String::from))
            .enumerate()
            .map(|(i, t)| (t, i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."},
                              "behavior": "Isolated", "invert": false},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        });
        let tok = Tokenizer::from_json_str(&json.to_string(), Path::new("test")).unwrap();
        let p = write(
            "ok.jsonl",
            "{\"prompt\": \"12+3=\"}\n{\"prompt\": \"12+3+4+5+6+7=\"}\n",
        );
        let recs = read_records(&p).unwrap();
        assert_eq!(recs[1].id, Some(1));
        let (ex, rejected) = tokenize(&recs, &tok, None, Some(1), 8).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].prompt.len(), 6);
        assert_eq!(rejected[0].0, PromptId(1));
        assert!(rejected[0].1.contains("max_prompt_tokens"));

        // An empty prompt is named by its line and id before any run.
        let p = write(
            "empty-prompt.jsonl",
            "{\"prompt\": \"1=\"}\n\n{\"id\": 500, \"prompt\": \"\"}\n",
        );
        let recs = read_records(&p).unwrap();
        let err = tokenize(&recs, &tok, None, None, 8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3 (id 500)") && err.contains("empty") && err.contains("BOS"),
            "{err}"
        );
    }
}

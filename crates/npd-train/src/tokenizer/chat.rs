//! Chat formats: the openPangu turn markers, and any model's Jinja
//! `chat_template` from `tokenizer_config.json`.

use std::path::Path;

use serde_json::Value;

use npd_core::{Error, Result};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the assistant.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's output.
    Tool,
    /// A function result.
    Function,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Renders conversations as text for a tokenizer.
pub trait ChatFormat {
    /// The conversation followed by the header of an assistant turn: the
    /// text a model continues. BOS is not included.
    fn prompt(&self, messages: &[Message]) -> Result<String>;

    /// An assistant reply as a training target: the content and the
    /// end-of-turn marker.
    fn target(&self, reply: &str) -> String;
}

/// openPangu-Embedded's format: `[unused9]ROLE：CONTENT[unused10]` per turn,
/// an empty system turn first when there is none, and `[unused9]助手：` as
/// the generation prompt.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanguChat;

/// Turn start marker.
pub const PANGU_TURN_START: &str = "[unused9]";
/// Turn end marker, also the end-of-sequence token.
pub const PANGU_TURN_END: &str = "[unused10]";

impl PanguChat {
    fn role(role: Role) -> &'static str {
        match role {
            Role::System => "系统",
            Role::User => "用户",
            Role::Assistant => "助手",
            Role::Tool => "工具",
            Role::Function => "方法",
        }
    }
}

impl ChatFormat for PanguChat {
    fn prompt(&self, messages: &[Message]) -> Result<String> {
        let mut out = String::new();
        if messages.first().is_none_or(|m| m.role != Role::System) {
            out.push_str("[unused9]系统：[unused10]");
        }
        for m in messages {
            out.push_str(PANGU_TURN_START);
            out.push_str(Self::role(m.role));
            out.push('：');
            out.push_str(&m.content);
            out.push_str(PANGU_TURN_END);
        }
        out.push_str("[unused9]助手：");
        Ok(out)
    }

    fn target(&self, reply: &str) -> String {
        format!("{reply}{PANGU_TURN_END}")
    }
}

/// A Jinja `chat_template` (Hugging Face convention: `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token`), rendered with
/// minijinja and Python string methods.
#[derive(Debug)]
pub struct TemplateChat {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl TemplateChat {
    /// A template with the given BOS and EOS strings.
    pub fn new(template: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| Error::invalid("chat_template", e.to_string()))?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Reads `chat_template`, `bos_token` and `eos_token` from a
    /// `tokenizer_config.json`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let what = path.display().to_string();
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(&what, format!("not valid JSON: {e}")))?;
        let token = |key: &str| -> String {
            match v.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        let template = v
            .get("chat_template")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(&what, "`chat_template`: missing or not a string"))?;
        Self::new(template, &token("bos_token"), &token("eos_token"))
    }

    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("added in new()");
        tmpl.render(minijinja::context! {
            messages => messages
                .iter()
                .map(|m| {
                    let role = serde_json::to_value(m.role).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                    minijinja::Value::from_pairs([("role", role), ("content", m.content.clone())])
                })
                .collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })
        .map_err(|e| Error::invalid("chat_template", format!("rendering failed: {e}")))
    }
}

impl ChatFormat for TemplateChat {
    fn prompt(&self, messages: &[Message]) -> Result<String> {
        let text = self.render(messages, true)?;
        // BOS is added as an id by the caller, not as text.
        Ok(text
            .strip_prefix(self.bos.as_str())
            .filter(|_| !self.bos.is_empty())
            .map_or(text.clone(), str::to_string))
    }

    fn target(&self, reply: &str) -> String {
        format!("{reply}{}", self.eos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pangu_prompt_matches_the_documented_example() {
        let p = PanguChat.prompt(&[Message::new(Role::User, "Hi")]).unwrap();
        assert_eq!(
            p,
            "[unused9]系统：[unused10][unused9]用户：Hi[unused10][unused9]助手："
        );
        let p = PanguChat
            .prompt(&[
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "Hi"),
            ])
            .unwrap();
        assert_eq!(
            p,
            "[unused9]系统：Be brief.[unused10][unused9]用户：Hi[unused10][unused9]助手："
        );
        assert_eq!(PanguChat.target("Hello"), "Hello[unused10]");
    }

    #[test]
    fn jinja_template_renders_with_python_methods() {
        let template = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let chat = TemplateChat::new(template, "<s>", "</s>").unwrap();
        let p = chat.prompt(&[Message::new(Role::User, "  Hi ")]).unwrap();
        assert_eq!(p, "<|user|>Hi</s><|assistant|>");
        assert_eq!(chat.target("Yes"), "Yes</s>");
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(TemplateChat::new("{% for %}", "", "").is_err());
        let chat =
            TemplateChat::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = chat.prompt(&[]).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }
}

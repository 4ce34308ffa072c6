//! OpenAI-compatible HTTP: embeddings (`POST /v1/embeddings`) and chat completions
//! with structured outputs (`POST /v1/chat/completions`, `response_format` of type
//! `json_schema`). The API key, if any, is sent as a bearer token and never logged.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{BoxFuture, InferenceError, ModelId, Provider, http_client, http_error};
use crate::settings::Secret;

/// POSTs `body` to `{base}{path}` with the bearer key and decodes a 2xx JSON answer.
async fn post_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
    api_key: &Secret,
    body: &Value,
) -> Result<T, InferenceError> {
    let mut req = http.post(url).json(body);
    if !api_key.is_empty() {
        req = req.bearer_auth(api_key.expose());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| InferenceError::Unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(http_error(resp).await);
    }
    resp.json()
        .await
        .map_err(|e| InferenceError::Protocol(e.to_string()))
}

pub struct OpenAiEmbeddings {
    base: String,
    model: ModelId,
    api_key: Secret,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiEmbeddings {
    /// `base` like `http://127.0.0.1:8090` (the `/v1/embeddings` path is appended).
    pub fn new(
        base: &str,
        model: &str,
        version: &str,
        api_key: Secret,
    ) -> Result<Self, InferenceError> {
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            model: ModelId::new("openai", model, version),
            api_key,
            http: http_client()?,
        })
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut parsed: Response = post_json(
            &self.http,
            format!("{}/v1/embeddings", self.base),
            &self.api_key,
            &json!({"model": self.model.name, "input": texts}),
        )
        .await?;
        parsed.data.sort_by_key(|d| d.index);
        Ok(parsed.data.into_iter().map(|d| d.embedding).collect())
    }
}

impl Provider<String, Vec<f32>> for OpenAiEmbeddings {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn endpoint(&self) -> &str {
        &self.base
    }
    fn infer<'a>(
        &'a self,
        batch: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, InferenceError>> {
        Box::pin(self.embed(batch))
    }
}

/// What a chat model is asked for: a JSON object matching `schema`.
#[derive(Clone, Debug)]
pub struct StructuredOutput {
    /// `response_format.json_schema.name` (letters, digits, `_` and `-`).
    pub name: String,
    /// The JSON Schema the answer must match (sent with `strict: true`, and checked here).
    pub schema: Value,
    /// The system message: the instructions; the input text is the user message.
    pub instructions: String,
    pub max_tokens: u32,
}

/// One structured answer, with the token usage the server reported.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatAnswer {
    pub value: Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Structured outputs from an OpenAI-compatible chat model. Each input text is one
/// completion (chat APIs take no batches; a batch's calls run concurrently). An answer
/// is accepted only if it is complete JSON matching the schema: servers that ignore
/// `response_format`, truncate at `max_tokens` or refuse get a typed error, not a guess.
pub struct OpenAiChat {
    base: String,
    model: ModelId,
    api_key: Secret,
    http: reqwest::Client,
    output: StructuredOutput,
    validator: jsonschema::Validator,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl OpenAiChat {
    /// `base` like `http://127.0.0.1:8080` (the `/v1/chat/completions` path is appended).
    /// An invalid schema is refused here, before any call.
    pub fn new(
        base: &str,
        model: &str,
        version: &str,
        api_key: Secret,
        output: StructuredOutput,
    ) -> Result<Self, InferenceError> {
        let validator = jsonschema::validator_for(&output.schema).map_err(|e| {
            InferenceError::Rejected(format!("invalid JSON schema {}: {e}", output.name))
        })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            model: ModelId::new("openai-chat", model, version),
            api_key,
            http: http_client()?,
            output,
            validator,
        })
    }

    /// The request body for one input text.
    pub fn request(&self, text: &str) -> Value {
        let o = &self.output;
        json!({
            "model": self.model.name,
            "messages": [
                {"role": "system", "content": o.instructions},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
            "max_tokens": o.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": o.name, "strict": true, "schema": o.schema},
            },
        })
    }

    /// Checks one chat answer: complete, not refused, JSON, and matching the schema.
    pub fn answer(&self, body: Value) -> Result<ChatAnswer, InferenceError> {
        let parsed: ChatResponse = serde_json::from_value(body)
            .map_err(|e| InferenceError::Protocol(format!("not a chat completion: {e}")))?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| InferenceError::Protocol("no choices in the answer".into()))?;
        if let Some(refusal) = choice.message.refusal.filter(|r| !r.is_empty()) {
            return Err(InferenceError::Rejected(format!(
                "the model refused: {refusal}"
            )));
        }
        if choice.finish_reason.as_deref() == Some("length") {
            return Err(InferenceError::Protocol(format!(
                "answer cut off at max_tokens {}",
                self.output.max_tokens
            )));
        }
        let content = choice.message.content.unwrap_or_default();
        let value: Value = serde_json::from_str(&content).map_err(|e| {
            InferenceError::Protocol(format!("answer is not JSON ({e}): {}", snippet(&content)))
        })?;
        if let Some(error) = self.validator.iter_errors(&value).next() {
            return Err(InferenceError::Protocol(format!(
                "answer does not match schema {} at `{}`: {error}",
                self.output.name,
                error.instance_path()
            )));
        }
        let usage = parsed.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        });
        Ok(ChatAnswer {
            value,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        })
    }

    pub async fn complete(&self, text: &str) -> Result<ChatAnswer, InferenceError> {
        let body: Value = post_json(
            &self.http,
            format!("{}/v1/chat/completions", self.base),
            &self.api_key,
            &self.request(text),
        )
        .await?;
        self.answer(body)
    }
}

fn snippet(s: &str) -> String {
    s.chars().take(120).collect()
}

impl Provider<String, ChatAnswer> for OpenAiChat {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn endpoint(&self) -> &str {
        &self.base
    }
    fn infer<'a>(
        &'a self,
        batch: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ChatAnswer>, InferenceError>> {
        Box::pin(async move {
            futures::future::join_all(batch.iter().map(|t| self.complete(t)))
                .await
                .into_iter()
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> OpenAiChat {
        OpenAiChat::new(
            "http://127.0.0.1:1/",
            "m",
            "1",
            Secret::default(),
            StructuredOutput {
                name: "triage".into(),
                schema: json!({"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]}},
                               "required": ["label"], "additionalProperties": false}),
                instructions: "Label it.".into(),
                max_tokens: 20,
            },
        )
        .expect("valid schema")
    }

    fn completion(content: &str, finish: &str) -> Value {
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
               "usage": {"prompt_tokens": 11, "completion_tokens": 4}})
    }

    #[test]
    fn the_request_asks_for_strict_json_schema_output() {
        let r = chat().request("hello");
        assert_eq!(r["response_format"]["type"], "json_schema");
        assert_eq!(r["response_format"]["json_schema"]["strict"], true);
        assert_eq!(r["response_format"]["json_schema"]["name"], "triage");
        assert_eq!(
            r["messages"][1],
            json!({"role": "user", "content": "hello"})
        );
        assert_eq!(r["temperature"], 0);
    }

    #[test]
    fn only_complete_schema_conforming_json_is_an_answer() {
        let c = chat();
        let ok = c
            .answer(completion(r#"{"label":"a"}"#, "stop"))
            .expect("valid");
        assert_eq!(
            ok,
            ChatAnswer {
                value: json!({"label": "a"}),
                prompt_tokens: 11,
                completion_tokens: 4
            }
        );
        let cases = [
            (completion(r#"{"label":"c"}"#, "stop"), "/label"),
            (
                completion(r#"{"label":"a","x":1}"#, "stop"),
                "does not match",
            ),
            (completion("Sure! The label is a.", "stop"), "not JSON"),
            (completion(r#"{"label":"#, "length"), "max_tokens 20"),
            (json!({"choices": []}), "no choices"),
        ];
        for (body, needle) in cases {
            let err = c.answer(body).expect_err("refused");
            assert!(
                matches!(&err, InferenceError::Protocol(m) if m.contains(needle)),
                "{needle}: {err}"
            );
        }
        let refused = json!({"choices": [{"message": {"content": null, "refusal": "no"}, "finish_reason": "stop"}]});
        assert!(matches!(
            c.answer(refused),
            Err(InferenceError::Rejected(_))
        ));
    }

    #[test]
    fn an_invalid_schema_is_refused_before_any_call() {
        let bad = OpenAiChat::new(
            "http://127.0.0.1:1",
            "m",
            "1",
            Secret::default(),
            StructuredOutput {
                name: "x".into(),
                schema: json!({"type": 12}),
                instructions: String::new(),
                max_tokens: 1,
            },
        );
        assert!(
            matches!(bad, Err(InferenceError::Rejected(m)) if m.contains("invalid JSON schema"))
        );
    }
}

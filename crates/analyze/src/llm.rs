//! The LLM route: an OpenAI-compatible chat completion (llama-server,
//! vLLM, Ollama's `/v1`, OpenAI) asked for a JSON verdict — document type,
//! chunking plan, reason — constrained by a JSON schema and checked against
//! it again here. The structure figures, language and token estimate are
//! still measured, not asked. A timeout, a transport error or an answer that
//! is not a valid verdict falls back to the heuristics, and says why.

use crate::{analyze, Analysis, DocType, Route};
use datafactory_core::{ChunkPlan, Document};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// The answer's cap: a verdict is about a hundred tokens; a model that
/// rambles is cut here and the heuristics decide.
const VERDICT_MAX_TOKENS: u32 = 1024;

/// The longest `reason` the schema allows, in characters. Bounded so that a
/// grammar-constrained server (llama-server, vLLM) must close the string: a
/// small model that loops inside it (Gemma 3 270M did, to the 1,024-token cap,
/// 70 s on a CPU) finishes in a few seconds. A longer one from a server that
/// ignores `maxLength` is cut here.
pub const REASON_MAX_CHARS: usize = 300;

/// Characters of the document shown to the LLM: the beginning is enough to
/// tell the type, and the prompt stays small.
const EXCERPT_CHARS: usize = 6_000;

/// What the LLM is asked to answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmVerdict {
    pub doc_type: DocType,
    pub plan: ChunkPlan,
    pub reason: String,
}

impl LlmVerdict {
    /// What the schema cannot say: sizes in a sane range.
    fn check(&self) -> Result<(), String> {
        if !(64..=4096).contains(&self.plan.max_tokens) {
            return Err(format!("plan.max_tokens {} is outside 64..=4096", self.plan.max_tokens));
        }
        if self.plan.overlap_tokens * 2 > self.plan.max_tokens {
            return Err(format!(
                "plan.overlap_tokens {} is over half of max_tokens",
                self.plan.overlap_tokens
            ));
        }
        Ok(())
    }
}

/// The JSON schema of [`LlmVerdict`], sent as the response format.
pub fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["doc_type", "plan", "reason"],
        "properties": {
            "doc_type": {"type": "string", "enum": DocType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>()},
            "plan": {
                "type": "object",
                "additionalProperties": false,
                "required": ["strategy", "max_tokens", "overlap_tokens", "keep_tables_whole", "keep_code_whole"],
                "properties": {
                    "strategy": {"type": "string", "enum": ["sections", "lines"]},
                    "max_tokens": {"type": "integer", "minimum": 64, "maximum": 4096},
                    "overlap_tokens": {"type": "integer", "minimum": 0, "maximum": 2048},
                    "keep_tables_whole": {"type": "boolean"},
                    "keep_code_whole": {"type": "boolean"}
                }
            },
            "reason": {"type": "string", "maxLength": REASON_MAX_CHARS}
        }
    })
}

/// A client of one OpenAI-compatible chat endpoint.
#[derive(Debug, Clone)]
pub struct LlmAnalyzer {
    endpoint: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl LlmAnalyzer {
    /// `url`: the API base (`http://host:8080/v1`) or the full
    /// `…/chat/completions` address.
    pub fn new(url: &str, model: &str, api_key: Option<String>, timeout: Duration) -> LlmAnalyzer {
        let url = url.trim_end_matches('/');
        let endpoint = if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        };
        LlmAnalyzer { endpoint, model: model.to_string(), api_key, timeout }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The LLM's analysis, or the heuristics' with the reason it fell back.
    pub fn analyze(&self, doc: &Document) -> Analysis {
        let mut analysis = analyze(doc);
        match self.verdict(doc, &analysis) {
            Ok(v) => {
                analysis.route = Route::Llm;
                analysis.analyzer = format!("llm:{}", self.model);
                analysis.doc_type = v.doc_type;
                analysis.plan = v.plan.normalized();
                analysis.reason = v.reason;
                analysis.signals.clear();
                analysis.confidence = 0.0;
            }
            Err(e) => {
                tracing::warn!("LLM analysis failed ({e}); using the heuristics");
                analysis.fallback = Some(format!("LLM {}: {e}", self.endpoint));
            }
        }
        analysis
    }

    /// Asks the LLM; any failure is an error message.
    pub fn verdict(&self, doc: &Document, measured: &Analysis) -> Result<LlmVerdict, String> {
        let excerpt: String = doc.text.chars().take(EXCERPT_CHARS).collect();
        let figures = json!({
            "format": doc.format,
            "title": doc.title,
            "structure": measured.structure,
            "language": measured.language.as_ref().map(|l| &l.name),
            "estimated_tokens": measured.estimated_tokens,
        });
        let system = format!(
            "You classify documents for a retrieval system and choose how to cut them into chunks. \
             Document types: {}. Strategy `sections` cuts by paragraphs and sentences (prose); \
             `lines` cuts by lines (code, data, chats). Sizes are in tokens (64 to 4096; overlap at most \
             half). Answer with one JSON object only, matching the schema.",
            DocType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        );
        let user = format!("Measured figures: {figures}\n\nThe document begins:\n<<<\n{excerpt}\n>>>");
        let body = json!({
            "model": self.model,
            "temperature": 0,
            "max_tokens": VERDICT_MAX_TOKENS,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "document_analysis", "strict": true, "schema": verdict_schema()}
            }
        });
        let mut request = ureq::post(&self.endpoint).timeout(self.timeout);
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = request.send_json(body).map_err(|e| match e {
            ureq::Error::Status(code, r) => {
                format!(
                    "HTTP {code}: {}",
                    r.into_string().unwrap_or_default().chars().take(200).collect::<String>()
                )
            }
            other => other.to_string(),
        })?;
        let answer: Value = response.into_json().map_err(|e| format!("the answer is not JSON: {e}"))?;
        if answer.pointer("/choices/0/finish_reason").and_then(Value::as_str) == Some("length") {
            return Err(format!(
                "the answer was cut short (finish_reason \"length\": at max_tokens {VERDICT_MAX_TOKENS} or at the \
                 end of the model's context)"
            ));
        }
        let content = answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or("the answer has no choices[0].message.content")?;
        parse_verdict(content)
    }
}

/// Reads a verdict from the model's message: the JSON object itself, or one
/// inside a Markdown code fence.
pub fn parse_verdict(content: &str) -> Result<LlmVerdict, String> {
    let t = content.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    let mut verdict: LlmVerdict =
        serde_json::from_str(t).map_err(|e| format!("the message is not a valid verdict: {e}"))?;
    verdict.check()?;
    if verdict.reason.chars().count() > REASON_MAX_CHARS {
        let cut: String = verdict.reason.chars().take(REASON_MAX_CHARS - 1).collect();
        verdict.reason = format!("{cut}…");
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(reason: &str) -> String {
        json!({
            "doc_type": "manual",
            "plan": {"strategy": "sections", "max_tokens": 384, "overlap_tokens": 0,
                     "keep_tables_whole": true, "keep_code_whole": true},
            "reason": reason
        })
        .to_string()
    }

    #[test]
    fn the_schema_bounds_the_reason_and_a_longer_one_is_cut() {
        assert_eq!(verdict_schema()["properties"]["reason"]["maxLength"], REASON_MAX_CHARS);
        let fits = "é".repeat(REASON_MAX_CHARS);
        assert_eq!(parse_verdict(&answer(&fits)).unwrap().reason, fits);
        let long = "é".repeat(REASON_MAX_CHARS + 1);
        let reason = parse_verdict(&answer(&long)).unwrap().reason;
        assert_eq!(reason.chars().count(), REASON_MAX_CHARS);
        assert!(reason.ends_with("é…"), "{reason}");
    }
}

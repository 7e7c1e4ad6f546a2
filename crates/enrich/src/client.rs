//! HTTP clients for the two LLM APIs: Ollama's `/api/chat` and the
//! OpenAI-compatible `/v1/chat/completions` (vLLM, llama.cpp's llama-server,
//! TGI). Blocking (ureq): the pool runs one thread per slot.

use datafactory_core::config::EndpointConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server refused this request itself (HTTP 400: e.g. too long); trying
    /// it elsewhere will not help.
    #[error("{url}: request refused (HTTP {status}): {body}")]
    Refused { url: String, status: u16, body: String },
    /// The server failed (HTTP 5xx, 404, 429, …).
    #[error("{url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    /// Could not connect, connection lost, or timed out.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// An answer that is not what the API documents.
    #[error("{url}: unexpected answer: {message}")]
    Invalid { url: String, message: String },
}

/// One completed call.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub text: String,
    /// Prompt tokens, as the server counted them.
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens it served from its cache (llama-server `timings.cache_n`,
    /// OpenAI `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: Option<u64>,
    /// Prompt tokens it had to evaluate (llama-server `timings.prompt_n`,
    /// Ollama `prompt_eval_count`).
    pub evaluated_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Server-side prefill and decode time (ms), where reported.
    pub prompt_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub seconds: f64,
}

/// A chat request: one user message.
pub struct Request<'a> {
    pub prompt: &'a str,
    pub max_tokens: u32,
    pub temperature: f32,
    /// llama-server's slot, when requests are pinned.
    pub slot: Option<usize>,
    /// Ollama's `num_ctx`.
    pub num_ctx: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Ollama,
    OpenAi,
}

/// A client for one endpoint.
pub struct Client {
    pub kind: ApiKind,
    pub base: String,
    pub model: String,
    api_key: String,
    keep_alive: String,
    extra: serde_json::Map<String, Value>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(config: &EndpointConfig, keep_alive: &str, connect: Duration, timeout: Duration) -> Client {
        let agent = ureq::AgentBuilder::new().timeout_connect(connect).timeout(timeout).build();
        Client {
            kind: if config.kind == "ollama" { ApiKind::Ollama } else { ApiKind::OpenAi },
            base: config.url.trim_end_matches('/').to_string(),
            model: config.model.clone(),
            api_key: config.api_key.clone(),
            keep_alive: keep_alive.to_string(),
            extra: config.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let url = self.url(path);
        let mut req = self.agent.post(&url);
        if !self.api_key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {}", self.api_key));
        }
        read(&url, req.send_json(body))
    }

    fn get(&self, path: &str) -> Result<Value, CallError> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        if !self.api_key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {}", self.api_key));
        }
        read(&url, req.call())
    }

    /// Is the server up and does it serve the model? Ollama: `/api/tags`
    /// lists it; OpenAI-compatible: `/v1/models` answers.
    pub fn health(&self) -> Result<(), CallError> {
        match self.kind {
            ApiKind::Ollama => {
                let tags = self.tags()?;
                let wanted = self.model.as_str();
                let found = tags.iter().any(|t| t == wanted || t.strip_suffix(":latest") == Some(wanted));
                if found {
                    Ok(())
                } else {
                    Err(CallError::Invalid {
                        url: self.url("/api/tags"),
                        message: format!("model {wanted:?} is not pulled (has {tags:?})"),
                    })
                }
            }
            ApiKind::OpenAi => self.get("/v1/models").map(|_| ()),
        }
    }

    /// Ollama: the models pulled (`/api/tags`).
    pub fn tags(&self) -> Result<Vec<String>, CallError> {
        let v = self.get("/api/tags")?;
        Ok(model_names(&v))
    }

    /// Ollama: the models loaded now (`/api/ps`).
    pub fn loaded(&self) -> Result<Vec<String>, CallError> {
        let v = self.get("/api/ps")?;
        Ok(model_names(&v))
    }

    /// Ollama: unloads the model now (`keep_alive: 0`).
    pub fn unload(&self) -> Result<(), CallError> {
        self.post("/api/chat", &json!({"model": self.model, "messages": [], "keep_alive": 0}))?;
        Ok(())
    }

    /// llama-server's `/tokenize`: the prompt's exact token count.
    pub fn tokenize(&self, text: &str) -> Result<usize, CallError> {
        let v = self.post("/tokenize", &json!({"content": text}))?;
        v["tokens"].as_array().map(Vec::len).ok_or_else(|| CallError::Invalid {
            url: self.url("/tokenize"),
            message: "no `tokens` array".into(),
        })
    }

    pub fn complete(&self, r: &Request<'_>) -> Result<Completion, CallError> {
        let started = Instant::now();
        let mut c = match self.kind {
            ApiKind::Ollama => self.complete_ollama(r)?,
            ApiKind::OpenAi => self.complete_openai(r)?,
        };
        c.seconds = started.elapsed().as_secs_f64();
        Ok(c)
    }

    fn complete_ollama(&self, r: &Request<'_>) -> Result<Completion, CallError> {
        let mut options = json!({"temperature": r.temperature, "num_predict": r.max_tokens});
        if let Some(n) = r.num_ctx {
            options["num_ctx"] = json!(n);
        }
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": r.prompt}],
            "stream": false,
            "keep_alive": self.keep_alive,
            "options": options,
        });
        merge(&mut body, &self.extra);
        let v = self.post("/api/chat", &body)?;
        let text = v["message"]["content"].as_str().ok_or_else(|| CallError::Invalid {
            url: self.url("/api/chat"),
            message: "no message.content".into(),
        })?;
        let ns_to_ms = |k: &str| v[k].as_f64().map(|ns| ns / 1e6);
        Ok(Completion {
            text: text.to_string(),
            prompt_tokens: None,
            cached_tokens: None,
            evaluated_tokens: v["prompt_eval_count"].as_u64(),
            completion_tokens: v["eval_count"].as_u64(),
            prompt_ms: ns_to_ms("prompt_eval_duration"),
            decode_ms: ns_to_ms("eval_duration"),
            seconds: 0.0,
        })
    }

    fn complete_openai(&self, r: &Request<'_>) -> Result<Completion, CallError> {
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": r.prompt}],
            "stream": false,
            "temperature": r.temperature,
            "max_tokens": r.max_tokens,
        });
        if let Some(slot) = r.slot {
            // llama-server: run on this slot (its own prefix cache) and keep the prompt cached.
            body["id_slot"] = json!(slot);
            body["cache_prompt"] = json!(true);
        }
        merge(&mut body, &self.extra);
        let v = self.post("/v1/chat/completions", &body)?;
        let text = v["choices"][0]["message"]["content"].as_str().ok_or_else(|| CallError::Invalid {
            url: self.url("/v1/chat/completions"),
            message: "no choices[0].message.content".into(),
        })?;
        let usage = &v["usage"];
        let timings = &v["timings"];
        let cached = timings["cache_n"].as_u64().or(usage["prompt_tokens_details"]["cached_tokens"].as_u64());
        let prompt_tokens = usage["prompt_tokens"].as_u64();
        let evaluated = timings["prompt_n"].as_u64().or(match (prompt_tokens, cached) {
            (Some(p), Some(c)) => Some(p.saturating_sub(c)),
            _ => None,
        });
        Ok(Completion {
            text: text.to_string(),
            prompt_tokens,
            cached_tokens: cached,
            evaluated_tokens: evaluated,
            completion_tokens: usage["completion_tokens"].as_u64(),
            prompt_ms: timings["prompt_ms"].as_f64(),
            decode_ms: timings["predicted_ms"].as_f64(),
            seconds: 0.0,
        })
    }
}

fn merge(body: &mut Value, extra: &serde_json::Map<String, Value>) {
    if let Some(map) = body.as_object_mut() {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
}

fn model_names(v: &Value) -> Vec<String> {
    v["models"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(|m| m["name"].as_str().or(m["model"].as_str())).map(String::from).collect()
        })
        .unwrap_or_default()
}

fn read(url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<Value, CallError> {
    match result {
        Ok(resp) => resp.into_json::<Value>().map_err(|e| CallError::Transport {
            url: url.to_string(),
            message: format!("reading the answer: {e}"),
        }),
        Err(ureq::Error::Status(status, resp)) => {
            let mut body = resp.into_string().unwrap_or_default();
            body.truncate(500);
            if status == 400 {
                Err(CallError::Refused { url: url.to_string(), status, body })
            } else {
                Err(CallError::Status { url: url.to_string(), status, body })
            }
        }
        Err(ureq::Error::Transport(t)) => {
            Err(CallError::Transport { url: url.to_string(), message: t.to_string() })
        }
    }
}

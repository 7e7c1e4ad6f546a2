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
    /// A well-formed answer that is no context (`answer::Judge`): the server
    /// is fine, its model's answer is not; asking it again will not help.
    /// The answer is kept for its token counts (the server did the work).
    #[error("{url}: unusable answer from {model}: {why}")]
    Unusable { url: String, model: String, why: String, answer: Box<Completion> },
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
        let resp = self.send(&url, body)?;
        resp.into_json::<Value>()
            .map_err(|e| CallError::Transport { url, message: format!("reading the answer: {e}") })
    }

    fn send(&self, url: &str, body: &Value) -> Result<ureq::Response, CallError> {
        let mut req = self.agent.post(url);
        if !self.api_key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {}", self.api_key));
        }
        status(url, req.send_json(body))
    }

    fn get(&self, path: &str) -> Result<Value, CallError> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        if !self.api_key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {}", self.api_key));
        }
        let resp = status(&url, req.call())?;
        resp.into_json::<Value>()
            .map_err(|e| CallError::Transport { url, message: format!("reading the answer: {e}") })
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
        self.call(r, None)
    }

    /// Like `complete`, but the answer is streamed and `first_token` is
    /// called when its first piece arrives: by then the server has evaluated
    /// the whole prompt, so a server that shares its prefix cache across
    /// sequences (vLLM, Ollama with `OLLAMA_MULTIUSER_CACHE`) can serve the
    /// same prefix to other requests while this one is still decoding.
    pub fn complete_streaming(
        &self,
        r: &Request<'_>,
        first_token: &mut dyn FnMut(),
    ) -> Result<Completion, CallError> {
        self.call(r, Some(first_token))
    }

    fn call(&self, r: &Request<'_>, first_token: Option<&mut dyn FnMut()>) -> Result<Completion, CallError> {
        let started = Instant::now();
        let stream = first_token.is_some();
        let (path, body) = match self.kind {
            ApiKind::Ollama => ("/api/chat", self.ollama_body(r, stream)),
            ApiKind::OpenAi => ("/v1/chat/completions", self.openai_body(r, stream)),
        };
        let url = self.url(path);
        let invalid = |message: String| CallError::Invalid { url: url.clone(), message };
        let mut c = match first_token {
            None => {
                let v = self.post(path, &body)?;
                let (pointer, name) = match self.kind {
                    ApiKind::Ollama => ("/message/content", "message.content"),
                    ApiKind::OpenAi => ("/choices/0/message/content", "choices[0].message.content"),
                };
                let text = v
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("no {name}")))?;
                self.completion(text.to_string(), &v)
            }
            Some(first_token) => {
                let resp = self.send(&url, &body)?;
                let (text, last) = read_stream(self.kind, resp, first_token).map_err(|e| match e {
                    StreamError::Io(e) => {
                        CallError::Transport { url: url.clone(), message: format!("reading the answer: {e}") }
                    }
                    StreamError::Invalid(m) => invalid(m),
                })?;
                self.completion(text, &last)
            }
        };
        c.seconds = started.elapsed().as_secs_f64();
        Ok(c)
    }

    fn ollama_body(&self, r: &Request<'_>, stream: bool) -> Value {
        let mut options = json!({"temperature": r.temperature, "num_predict": r.max_tokens});
        if let Some(n) = r.num_ctx {
            options["num_ctx"] = json!(n);
        }
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": r.prompt}],
            "stream": stream,
            "keep_alive": self.keep_alive,
            "options": options,
        });
        merge(&mut body, &self.extra);
        body
    }

    fn openai_body(&self, r: &Request<'_>, stream: bool) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": r.prompt}],
            "stream": stream,
            "temperature": r.temperature,
            "max_tokens": r.max_tokens,
        });
        if stream {
            // The token counts come in a last chunk of their own.
            body["stream_options"] = json!({"include_usage": true});
        }
        if let Some(slot) = r.slot {
            // llama-server: run on this slot (its own prefix cache) and keep the prompt cached.
            body["id_slot"] = json!(slot);
            body["cache_prompt"] = json!(true);
        }
        merge(&mut body, &self.extra);
        body
    }

    /// The counts of an answer: Ollama's final object, or an OpenAI answer
    /// (or the chunk of a streamed one that carries `usage` and, from
    /// llama-server, `timings`).
    fn completion(&self, text: String, v: &Value) -> Completion {
        match self.kind {
            ApiKind::Ollama => {
                let ns_to_ms = |k: &str| v[k].as_f64().map(|ns| ns / 1e6);
                Completion {
                    text,
                    prompt_tokens: None,
                    cached_tokens: None,
                    evaluated_tokens: v["prompt_eval_count"].as_u64(),
                    completion_tokens: v["eval_count"].as_u64(),
                    prompt_ms: ns_to_ms("prompt_eval_duration"),
                    decode_ms: ns_to_ms("eval_duration"),
                    seconds: 0.0,
                }
            }
            ApiKind::OpenAi => {
                let usage = &v["usage"];
                let timings = &v["timings"];
                let cached =
                    timings["cache_n"].as_u64().or(usage["prompt_tokens_details"]["cached_tokens"].as_u64());
                let prompt_tokens = usage["prompt_tokens"].as_u64();
                let evaluated = timings["prompt_n"].as_u64().or(match (prompt_tokens, cached) {
                    (Some(p), Some(c)) => Some(p.saturating_sub(c)),
                    _ => None,
                });
                Completion {
                    text,
                    prompt_tokens,
                    cached_tokens: cached,
                    evaluated_tokens: evaluated,
                    completion_tokens: usage["completion_tokens"].as_u64(),
                    prompt_ms: timings["prompt_ms"].as_f64(),
                    decode_ms: timings["predicted_ms"].as_f64(),
                    seconds: 0.0,
                }
            }
        }
    }
}

enum StreamError {
    Io(std::io::Error),
    Invalid(String),
}

/// Reads a streamed answer: Ollama's lines of JSON (the last has `done:
/// true` and the counts), or OpenAI's server-sent events (`data: {...}`
/// chunks with `choices[0].delta.content`, a chunk with `usage`, then
/// `data: [DONE]`). Returns the text and the object holding the counts
/// (OpenAI: the chunks' `usage` and `timings` merged).
fn read_stream(
    kind: ApiKind,
    resp: ureq::Response,
    first_token: &mut dyn FnMut(),
) -> Result<(String, Value), StreamError> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(resp.into_reader());
    let mut text = String::new();
    let mut counts = json!({});
    let mut first = Some(first_token);
    let mut finished = false;
    for line in (&mut reader).lines() {
        let line = line.map_err(StreamError::Io)?;
        let data = match kind {
            ApiKind::Ollama => line.trim(),
            ApiKind::OpenAi => match line.trim().strip_prefix("data:") {
                Some(d) => d.trim(),
                None => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if data == "[DONE]" {
            finished = true;
            break;
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Invalid(format!("a streamed chunk is not JSON ({e}): {data:.200}")))?;
        if let Some(e) = v.get("error") {
            return Err(StreamError::Invalid(format!("the server stopped with an error: {e}")));
        }
        let piece = match kind {
            ApiKind::Ollama => v["message"]["content"].as_str(),
            ApiKind::OpenAi => v["choices"][0]["delta"]["content"].as_str(),
        };
        if let Some(piece) = piece.filter(|p| !p.is_empty()) {
            text.push_str(piece);
            if let Some(f) = first.take() {
                f();
            }
        }
        match kind {
            ApiKind::Ollama => {
                if v["done"].as_bool() == Some(true) {
                    counts = v;
                    finished = true;
                    break;
                }
            }
            ApiKind::OpenAi => {
                for key in ["usage", "timings"] {
                    if v[key].is_object() {
                        counts[key] = v[key].clone();
                    }
                }
            }
        }
    }
    if !finished {
        return Err(StreamError::Invalid("the streamed answer ended before it was done".into()));
    }
    // Read the body to its end, so the connection can serve the next request.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(StreamError::Io)?;
    Ok((text, counts))
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

fn status(url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, CallError> {
    match result {
        Ok(resp) => Ok(resp),
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

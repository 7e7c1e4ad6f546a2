//! The HTTP the launcher speaks: health checks, and Ollama's model list,
//! warm-up and unload. Blocking, with short timeouts.

use std::time::Duration;

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(2)).timeout(timeout).build()
}

/// GET `url`: Ok when it answers 2xx.
pub fn health(url: &str) -> Result<(), String> {
    match agent(Duration::from_secs(5)).get(url).call() {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, _)) => Err(format!("HTTP {code}")),
        Err(e) => Err(short(&e)),
    }
}

/// A DataFactory service's fleet (`GET /ready`'s `fleet`: the nodes sharing
/// its PostgreSQL store and the job queue); None on the embedded store, or
/// when `/ready` does not answer (it needs the key where keys are set).
pub fn datafactory_fleet(base: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value =
        agent(Duration::from_secs(5)).get(&format!("{base}/ready")).call().ok()?.into_json().ok()?;
    Some(v["fleet"].clone()).filter(|f| f.is_object())
}

/// Ollama: the models loaded now (`GET /api/ps`).
pub fn ollama_loaded(base: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = agent(Duration::from_secs(5))
        .get(&format!("{base}/api/ps"))
        .call()
        .map_err(|e| short(&e))?
        .into_json()
        .map_err(|e| format!("not JSON: {e}"))?;
    Ok(v["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().or(m["model"].as_str()).map(str::to_string))
        .collect())
}

/// Ollama: loads `model` and keeps it for `keep_alive` (a generate request without a prompt).
pub fn ollama_warm(base: &str, model: &str, keep_alive: &str) -> Result<(), String> {
    ollama_generate(base, serde_json::json!({"model": model, "keep_alive": keep_alive}), 600)
}

/// Ollama: unloads `model` now (`keep_alive: 0`).
pub fn ollama_unload(base: &str, model: &str) -> Result<(), String> {
    ollama_generate(base, serde_json::json!({"model": model, "keep_alive": 0}), 60)
}

fn ollama_generate(base: &str, body: serde_json::Value, timeout_s: u64) -> Result<(), String> {
    match agent(Duration::from_secs(timeout_s)).post(&format!("{base}/api/generate")).send_json(body) {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            Err(format!("HTTP {code}: {}", text.trim()))
        }
        Err(e) => Err(short(&e)),
    }
}

fn short(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Transport(t) if t.kind() == ureq::ErrorKind::ConnectionFailed => {
            "down (connection refused)".to_string()
        }
        ureq::Error::Transport(t) => match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        },
        other => other.to_string(),
    }
}

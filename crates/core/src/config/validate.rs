//! `Config::validate`: what types alone cannot check, each error naming its key.
//!
//! Reads the configuration; changes nothing.

use super::*;

impl Config {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, message: message.into() })
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.ingest.default_collection.trim().is_empty() {
            return invalid("ingest.default_collection", "must not be empty");
        }
        if self.ingest.max_file_bytes == 0 {
            return invalid("ingest.max_file_bytes", "must be greater than 0");
        }
        if self.ingest.max_decompressed_bytes == 0 {
            return invalid("ingest.max_decompressed_bytes", "must be greater than 0");
        }
        if self.ingest.max_nesting == 0 {
            return invalid("ingest.max_nesting", "must be greater than 0");
        }
        if !matches!(self.ingest.parse_isolation.as_str(), "pdf" | "all" | "none") {
            return invalid(
                "ingest.parse_isolation",
                format!("must be pdf, all or none, is {:?}", self.ingest.parse_isolation),
            );
        }
        if self.ingest.parse_timeout_seconds == 0 {
            return invalid("ingest.parse_timeout_seconds", "must be greater than 0");
        }
        if self.ingest.parse_memory_mb < 64 {
            return invalid(
                "ingest.parse_memory_mb",
                format!("must be at least 64 (is {})", self.ingest.parse_memory_mb),
            );
        }
        if self.chunking.max_tokens < 16 {
            return invalid(
                "chunking.max_tokens",
                format!("must be at least 16 (is {})", self.chunking.max_tokens),
            );
        }
        if self.chunking.overlap_tokens * 2 > self.chunking.max_tokens {
            return invalid(
                "chunking.overlap_tokens",
                format!(
                    "must be at most half of chunking.max_tokens ({}), is {}",
                    self.chunking.max_tokens, self.chunking.overlap_tokens
                ),
            );
        }
        let n = &self.enrichment;
        if !matches!(n.mode.as_str(), "auto" | "heuristic" | "off") {
            return invalid("enrichment.mode", format!("must be auto, heuristic or off, is {:?}", n.mode));
        }
        if !matches!(n.schedule.as_str(), "affine" | "round_robin") {
            return invalid(
                "enrichment.schedule",
                format!("must be affine or round_robin, is {:?}", n.schedule),
            );
        }
        if !n.template.is_empty() {
            if !n.template.contains("{document}") || !n.template.contains("{chunk}") {
                return invalid("enrichment.template", "must contain {document} and {chunk}");
            }
            if n.template_version.trim().is_empty() {
                return invalid("enrichment.template_version", "must name the custom template's version");
            }
        }
        if n.max_answer_tokens == 0 || n.max_answer_tokens > 4096 {
            return invalid("enrichment.max_answer_tokens", "must be between 1 and 4096");
        }
        if n.attempts == 0 {
            return invalid("enrichment.attempts", "must be at least 1");
        }
        if n.request_timeout_seconds == 0 {
            return invalid("enrichment.request_timeout_seconds", "must be greater than 0");
        }
        for ep in &n.endpoints {
            if !matches!(ep.kind.as_str(), "ollama" | "openai") {
                return invalid(
                    "enrichment.endpoints.kind",
                    format!("must be ollama or openai, is {:?}", ep.kind),
                );
            }
            if !(ep.url.starts_with("http://") || ep.url.starts_with("https://")) {
                return invalid(
                    "enrichment.endpoints.url",
                    format!("must be an http(s) URL, is {:?}", ep.url),
                );
            }
            if ep.model.trim().is_empty() {
                return invalid("enrichment.endpoints.model", "must not be empty");
            }
            if ep.slots == 0 || ep.slots > 256 {
                return invalid("enrichment.endpoints.slots", "must be between 1 and 256");
            }
            if ep.context_tokens < 256 {
                return invalid("enrichment.endpoints.context_tokens", "must be at least 256");
            }
        }
        let e = &self.embedding;
        if !matches!(e.device.as_str(), "cpu" | "cuda" | "auto") {
            return invalid("embedding.device", format!("must be cpu, cuda or auto, is {:?}", e.device));
        }
        if !matches!(e.dtype.as_str(), "auto" | "f32" | "f16" | "bf16" | "int8") {
            return invalid(
                "embedding.dtype",
                format!("must be auto, f32, f16, bf16 or int8, is {:?}", e.dtype),
            );
        }
        if e.max_length < 8 || e.max_length > 8192 {
            return invalid(
                "embedding.max_length",
                format!("must be between 8 and 8192, is {}", e.max_length),
            );
        }
        if e.max_windows == 0 || e.max_windows > 256 {
            return invalid(
                "embedding.max_windows",
                format!("must be between 1 and 256, is {}", e.max_windows),
            );
        }
        if e.batch_size == 0 {
            return invalid("embedding.batch_size", "must be at least 1");
        }
        if e.batch_tokens < e.max_length {
            return invalid(
                "embedding.batch_tokens",
                format!("must be at least embedding.max_length ({}), is {}", e.max_length, e.batch_tokens),
            );
        }
        let r = &self.rerank;
        if !matches!(r.mode.as_str(), "off" | "remote" | "local") {
            return invalid("rerank.mode", format!("must be off, remote or local, is {:?}", r.mode));
        }
        if r.mode == "remote" && !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
            return invalid("rerank.url", format!("must be an http:// or https:// URL, is {:?}", r.url));
        }
        if r.timeout_seconds == 0 {
            return invalid("rerank.timeout_seconds", "must be at least 1");
        }
        let is_url = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if let Some(u) = r.urls.iter().find(|u| !is_url(u)) {
            return invalid("rerank.urls", format!("must be http:// or https:// URLs, has {u:?}"));
        }
        if let Some(u) = self.embedding.remote_urls.iter().find(|u| !is_url(u)) {
            return invalid("embedding.remote_urls", format!("must be http:// or https:// URLs, has {u:?}"));
        }
        let p = &self.remote;
        if p.timeout_seconds == 0 {
            return invalid("remote.timeout_seconds", "must be at least 1");
        }
        if p.batch == 0 {
            return invalid("remote.batch", "must be at least 1");
        }
        if p.parallel == 0 {
            return invalid("remote.parallel", "must be at least 1");
        }
        if p.attempts == 0 {
            return invalid("remote.attempts", "must be at least 1");
        }
        if r.candidates == 0 || r.candidates > 1_000 {
            return invalid("rerank.candidates", format!("must be between 1 and 1000, is {}", r.candidates));
        }
        if r.address.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "rerank.address",
                format!("must be an IP address and port such as 127.0.0.1:9200, is {:?}", r.address),
            );
        }
        if !matches!(r.device.as_str(), "cpu" | "cuda" | "auto") {
            return invalid("rerank.device", format!("must be cpu, cuda or auto, is {:?}", r.device));
        }
        if !matches!(r.dtype.as_str(), "auto" | "f32" | "f16" | "bf16" | "int8") {
            return invalid(
                "rerank.dtype",
                format!("must be auto, f32, f16, bf16 or int8, is {:?}", r.dtype),
            );
        }
        if r.max_length < 8 || r.max_length > 8192 {
            return invalid("rerank.max_length", format!("must be between 8 and 8192, is {}", r.max_length));
        }
        if r.query_max_length > r.max_length.saturating_sub(4) {
            return invalid(
                "rerank.query_max_length",
                format!(
                    "must leave room for the passage: at most rerank.max_length - 4 ({}), is {}",
                    r.max_length.saturating_sub(4),
                    r.query_max_length
                ),
            );
        }
        if r.batch_size == 0 {
            return invalid("rerank.batch_size", "must be at least 1");
        }
        if r.batch_tokens < r.max_length {
            return invalid(
                "rerank.batch_tokens",
                format!("must be at least rerank.max_length ({}), is {}", r.max_length, r.batch_tokens),
            );
        }
        if self.search.top_k == 0 || self.search.top_k > 10_000 {
            return invalid("search.top_k", "must be between 1 and 10000");
        }
        if !matches!(self.search.mode.as_str(), "hybrid" | "lexical" | "dense" | "sparse") {
            return invalid(
                "search.mode",
                format!("must be hybrid, lexical, dense or sparse, is {:?}", self.search.mode),
            );
        }
        if super::FusionMethod::parse_name(&self.search.fusion).is_none() {
            return invalid(
                "search.fusion",
                format!("must be {}, is {:?}", super::FusionMethod::NAMES, self.search.fusion),
            );
        }
        if self.search.candidates == 0 || self.search.candidates > 10_000 {
            return invalid("search.candidates", "must be between 1 and 10000");
        }
        if !matches!(self.vectors.quantization.as_str(), "f16" | "bf16" | "f32" | "i8") {
            return invalid(
                "vectors.quantization",
                format!("must be f16, bf16, f32 or i8, is {:?}", self.vectors.quantization),
            );
        }
        if self.vectors.connectivity < 2 {
            return invalid("vectors.connectivity", "must be at least 2");
        }
        if self.vectors.expansion_add == 0 || self.vectors.expansion_search == 0 {
            return invalid("vectors.expansion_search", "expansions must be at least 1");
        }
        match self.store.backend.as_str() {
            "embedded" => {}
            "postgres" => {
                if !(self.store.url.starts_with("postgres://") || self.store.url.starts_with("postgresql://"))
                {
                    return invalid("store.url", "must be a postgres:// URL when store.backend is postgres");
                }
                let s = &self.store.schema;
                if s.is_empty()
                    || s.len() > 63
                    || !s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    return invalid("store.schema", "must be a lower-case SQL identifier (a-z, 0-9, _)");
                }
                if self.store.pool_size == 0 {
                    return invalid("store.pool_size", "must be at least 1");
                }
                if self.store.connect_timeout_seconds == 0 {
                    return invalid("store.connect_timeout_seconds", "must be at least 1");
                }
                if self.store.lease_seconds < 2 {
                    return invalid("store.lease_seconds", "must be at least 2");
                }
            }
            other => {
                return invalid("store.backend", format!("must be embedded or postgres, is {other:?}"));
            }
        }
        if self.server.address.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "server.address",
                format!(
                    "must be an IP address and port such as 127.0.0.1:9000, is {:?}",
                    self.server.address
                ),
            );
        }
        if self.server.api_keys.iter().any(|k| k.len() < 16) {
            return invalid("server.api_keys", "every key must be at least 16 characters");
        }
        if self.server.max_query_terms == 0 {
            return invalid("server.max_query_terms", "must be at least 1");
        }
        if self.server.max_concurrent_requests == 0 {
            return invalid("server.max_concurrent_requests", "must be at least 1");
        }
        if self.server.request_timeout_seconds == 0 {
            return invalid("server.request_timeout_seconds", "must be at least 1");
        }
        let a = &self.analysis;
        if !matches!(a.route.as_str(), "heuristic" | "llm") {
            return invalid("analysis.route", format!("must be heuristic or llm, is {:?}", a.route));
        }
        if a.route == "llm" && a.url.is_empty() && (a.llm_url.is_empty() || a.llm_model.is_empty()) {
            return invalid(
                "analysis.llm_url",
                "route = \"llm\" needs analysis.llm_url and analysis.llm_model",
            );
        }
        for (key, url) in [("analysis.url", &a.url), ("analysis.llm_url", &a.llm_url)] {
            if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
                return invalid(key, format!("must start with http:// or https://, is {url:?}"));
            }
        }
        if a.timeout_seconds == 0 {
            return invalid("analysis.timeout_seconds", "must be at least 1");
        }
        if a.address.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "analysis.address",
                format!("must be an IP address and port such as 127.0.0.1:9100, is {:?}", a.address),
            );
        }
        for (key, v) in [
            ("search.title_boost", self.search.title_boost),
            ("search.heading_boost", self.search.heading_boost),
            ("search.rrf_k", self.search.rrf_k),
            ("search.weight_words", self.search.weight_words),
            ("search.weight_dense", self.search.weight_dense),
            ("search.weight_sparse", self.search.weight_sparse),
        ] {
            if !v.is_finite() || v < 0.0 {
                return invalid(key, format!("must be a finite number >= 0, is {v}"));
            }
        }
        Ok(())
    }
}

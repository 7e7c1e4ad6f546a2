//! One typed configuration for every command and service.
//!
//! Sources, later ones winning: built-in defaults, the TOML file
//! (`datafactory.toml` in the working directory, or `--config PATH`),
//! `DATAFACTORY_*` environment variables (nested keys joined by `__`, e.g.
//! `DATAFACTORY_CHUNKING__MAX_TOKENS=256`), then command-line flags. The result
//! is validated once; every error names the offending key.

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod sections;
mod validate;
pub use sections::*;

/// The configuration file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "datafactory.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store lives (SQLite database and word index).
    pub data_dir: PathBuf,
    pub ingest: IngestConfig,
    pub chunking: ChunkingConfig,
    pub embedding: EmbeddingConfig,
    pub vectors: VectorConfig,
    pub search: SearchConfig,
    pub rerank: RerankConfig,
    pub server: ServerConfig,
    pub analysis: AnalysisConfig,
    pub enrichment: EnrichmentConfig,
    pub remote: RemoteConfig,
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./datafactory-data"),
            ingest: IngestConfig::default(),
            chunking: ChunkingConfig::default(),
            embedding: EmbeddingConfig::default(),
            vectors: VectorConfig::default(),
            search: SearchConfig::default(),
            rerank: RerankConfig::default(),
            server: ServerConfig::default(),
            analysis: AnalysisConfig::default(),
            enrichment: EnrichmentConfig::default(),
            remote: RemoteConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Loads defaults ← file ← environment ← `overrides` (a serialisable
    /// partial configuration, e.g. from flags), then validates.
    ///
    /// `file`: `Some(path)` must exist; `None` reads `datafactory.toml` if present.
    pub fn load<O: Serialize>(file: Option<&Path>, overrides: &O) -> Result<Config, ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed("DATAFACTORY_"))
    }

    fn load_with_env<O: Serialize>(
        file: Option<&Path>,
        overrides: &O,
        env: Env,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::MissingFile(path.to_path_buf()));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).exists() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        // Variables of the programs, not configuration keys: the file
        // (`DATAFACTORY_CONFIG`), the log filter, the CLI client's service
        // and key (`DATAFACTORY_SERVER`, `DATAFACTORY_API_KEY`; the
        // `[server]` section's keys have a `SERVER__` prefix), the launcher's
        // deployment file, where NVML is (`DATAFACTORY_NVML_LIBRARY`) and the
        // state file the launcher gives the services it starts
        // (`DATAFACTORY_LAUNCHER_STATE`), stage profiling, the encoder's
        // kernel switches (`DATAFACTORY_CPU_AMX`, `DATAFACTORY_CPU_AVX512`,
        // `DATAFACTORY_CUDA_FUSED`),
        // and the test suite's `DATAFACTORY_TEST_*` paths.
        let env = env.split("__").ignore(&[
            "config",
            "log",
            "server",
            "api_key",
            "deploy",
            "nvml_library",
            "launcher_state",
            "profile_stages",
            "cpu_amx",
            "cpu_avx512",
            "cuda_fused",
        ]);
        let env = env.filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"));
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML (for `datafactory config show`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Validates a collection name: 1-64 characters of letters, digits, `-`, `_`, `.`.
pub fn validate_collection(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("collection name must be 1 to 64 characters, got {} characters", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!(
            "collection name {name:?} has the character {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn no_overrides() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn env() -> Env {
        // A prefix no real environment has, so tests do not depend on the caller's.
        Env::prefixed("DATAFACTORY_TEST_UNUSED_")
    }

    /// The programs' own variables are not configuration keys; a section's
    /// keys still are, and a misspelt one is still an error.
    #[test]
    fn program_variables_are_not_configuration() {
        let vars = [
            ("DATAFACTORY_PROGTEST_API_KEY", "k"),
            ("DATAFACTORY_PROGTEST_SERVER", "http://127.0.0.1:9000"),
            ("DATAFACTORY_PROGTEST_DEPLOY", "deploy.toml"),
            ("DATAFACTORY_PROGTEST_PROFILE_STAGES", "1"),
            ("DATAFACTORY_PROGTEST_NVML_LIBRARY", "/opt/nvidia/libnvidia-ml.so.1"),
            ("DATAFACTORY_PROGTEST_LAUNCHER_STATE", "/srv/deploy/state.json"),
            ("DATAFACTORY_PROGTEST_CPU_AMX", "0"),
            ("DATAFACTORY_PROGTEST_CPU_AVX512", "0"),
            ("DATAFACTORY_PROGTEST_CUDA_FUSED", "0"),
            ("DATAFACTORY_PROGTEST_TEST_MINILM", "/models/minilm"),
            ("DATAFACTORY_PROGTEST_SERVER__MAX_BODY_BYTES", "12345"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let c = Config::load_with_env(None, &no_overrides(), Env::prefixed("DATAFACTORY_PROGTEST_")).unwrap();
        assert_eq!(c.server.max_body_bytes, 12345);
        std::env::set_var("DATAFACTORY_PROGTEST_EMBEDING__MODEL", "x");
        let e = Config::load_with_env(None, &no_overrides(), Env::prefixed("DATAFACTORY_PROGTEST_"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("embeding"), "{e}");
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        std::env::remove_var("DATAFACTORY_PROGTEST_EMBEDING__MODEL");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_and_overrides_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        std::fs::write(&path, "data_dir = \"/x\"\n[chunking]\nmax_tokens = 200\n").unwrap();
        let c = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.chunking.max_tokens, 200);
        let o = serde_json::json!({"chunking": {"max_tokens": 300}});
        let c = Config::load_with_env(Some(&path), &o, env()).unwrap();
        assert_eq!(c.chunking.max_tokens, 300);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        std::fs::write(&path, "[chunking]\nmax_tokns = 200\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("max_tokns"), "{e}");
        std::fs::write(&path, "[chunking]\nmax_tokens = \"many\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("chunking.max_tokens"), "{e}");
        std::fs::write(&path, "[chunking]\nmax_tokens = 100\noverlap_tokens = 90\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("chunking.overlap_tokens"), "{e}");
        let e = Config::load_with_env(Some(&dir.path().join("none.toml")), &no_overrides(), env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(&path, "[analysis]\nroute = \"magic\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("analysis.route"), "{e}");
        std::fs::write(&path, "[analysis]\nroute = \"llm\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("analysis.llm_url"), "{e}");
    }

    #[test]
    fn rerank_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        std::fs::write(
            &path,
            "[rerank]\nmode = \"remote\"\nurl = \"http://10.0.0.2:9200\"\ncandidates = 20\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap();
        assert_eq!(c.rerank.mode, "remote");
        assert_eq!(c.rerank.candidates, 20);
        assert_eq!(c.rerank.effective_query_max_length(), 384);
        for (toml, key) in [
            ("mode = \"sometimes\"", "rerank.mode"),
            ("mode = \"remote\"\nurl = \"localhost:9200\"", "rerank.url"),
            ("candidates = 0", "rerank.candidates"),
            ("query_max_length = 510", "rerank.query_max_length"),
            ("dtype = \"int4\"", "rerank.dtype"),
            ("mdoel = \"x\"", "mdoel"),
        ] {
            std::fs::write(&path, format!("[rerank]\n{toml}\n")).unwrap();
            let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn store_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        let c = Config::load_with_env(None, &no_overrides(), env()).unwrap();
        assert_eq!(c.store.backend, "embedded");
        std::fs::write(
            &path,
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://df@db:5432/df?sslmode=require\"\npool_size = 16\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap();
        assert_eq!((c.store.backend.as_str(), c.store.pool_size), ("postgres", 16));
        assert_eq!(c.store.schema, "datafactory");
        for (toml, key) in [
            ("backend = \"mysql\"", "store.backend"),
            ("backend = \"postgres\"", "store.url"),
            ("backend = \"postgres\"\nurl = \"postgres://x/y\"\nschema = \"Bad-Name\"", "store.schema"),
            ("backend = \"postgres\"\nurl = \"postgres://x/y\"\npool_size = 0", "store.pool_size"),
            ("urll = \"x\"", "urll"),
        ] {
            std::fs::write(&path, format!("[store]\n{toml}\n")).unwrap();
            let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn collection_names() {
        assert!(validate_collection("docs-2024_v1.0").is_ok());
        assert!(validate_collection("").is_err());
        assert!(validate_collection("a b").unwrap_err().contains("' '"));
    }
}

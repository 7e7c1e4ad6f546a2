//! The deployment file: which services run, on which port and GPU, with which
//! settings; and the plan made from it (programs, arguments, environment, log
//! files, health URLs). Reading and planning start nothing.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The seed's layout (`deploy/seed.toml`): embedder GPU 0, reranker GPU 1,
/// analyzer on no GPU, Ollama × 6 on GPUs 2-7.
pub const SEED_LAYOUT: &str = include_str!("../../../deploy/seed.toml");

/// A deployment file that cannot be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read the deployment file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the deployment file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("the deployment file {path}: {key}: {message}")]
    Invalid { path: String, key: String, message: String },
}

/// The whole file: `[launcher]` and one `[[service]]` table per service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    #[serde(default)]
    pub launcher: LauncherSettings,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    /// Where relative paths are resolved and services run: the file's folder
    /// (the current folder for the built-in layout).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file's path, or `built-in seed layout`.
    #[serde(skip)]
    pub source: String,
}

/// `[launcher]`: how the launcher itself behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LauncherSettings {
    /// The `ollama` program (a name on PATH or a path).
    pub ollama: String,
    /// The `datafactory` program for serve, rerank and analyze services
    /// (default: the running `datafactory` binary).
    pub datafactory: Option<PathBuf>,
    /// Folder of `<service>.log`.
    pub logs: PathBuf,
    /// The state file: what this launcher started (PIDs, start times, command lines).
    pub state: PathBuf,
    /// How long `up` waits for every service's health check.
    pub health_timeout_s: u64,
    /// Between SIGTERM and SIGKILL when stopping.
    pub grace_s: u64,
    /// The longest wait before restarting a crashed service (the backoff doubles from 1 s).
    pub max_backoff_s: u64,
    /// Lets several services name the same GPU (a one-GPU test machine);
    /// by default each GPU belongs to one service.
    pub share_gpus: bool,
}

impl Default for LauncherSettings {
    fn default() -> Self {
        LauncherSettings {
            ollama: "ollama".into(),
            datafactory: None,
            logs: "logs".into(),
            state: "datafactory-launcher.json".into(),
            health_timeout_s: 180,
            grace_s: 10,
            max_backoff_s: 60,
            share_gpus: false,
        }
    }
}

/// What a service is: which program and which health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ServiceKind)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `datafactory serve` (the DataFactory with its embedder).
    Serve,
    /// `datafactory rerank-server`.
    Rerank,
    /// `datafactory analyze-server`.
    Analyze,
    /// `ollama serve`.
    Ollama,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Serve => "serve",
            Kind::Rerank => "rerank",
            Kind::Analyze => "analyze",
            Kind::Ollama => "ollama",
        }
    }

    /// The path answered when the service is up.
    pub fn health_path(self) -> &'static str {
        match self {
            Kind::Ollama => "/api/tags",
            _ => "/health",
        }
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique; names the log file (`logs/<name>.log`).
    pub name: String,
    pub kind: Kind,
    /// The port it listens on (required unless `url` is given).
    pub port: Option<u16>,
    /// The address it listens on (default: 127.0.0.1 for the DataFactory's
    /// services, which need `server.api_keys` or `server.allow_insecure` on
    /// any other address; 0.0.0.0 for Ollama).
    #[serde(default)]
    pub host: String,
    /// The GPU it sees (`CUDA_VISIBLE_DEVICES`, NVML/nvidia-smi numbering); none: it sees no GPU.
    pub gpu: Option<u32>,
    /// Runs elsewhere (another machine): not started, only checked by
    /// `status` and unloaded by `ollama unload`.
    pub url: Option<String>,
    /// serve, rerank, analyze: the configuration file (`--config`).
    pub config: Option<PathBuf>,
    /// serve, rerank, analyze: configuration keys (`"embedding.device" = "cuda"`),
    /// passed as `DATAFACTORY_*` variables.
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    /// Further environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// ollama: `OLLAMA_KEEP_ALIVE` (default 30m).
    pub keep_alive: Option<String>,
    /// ollama: requests served at once, `OLLAMA_NUM_PARALLEL` (default 4);
    /// the enrichment endpoint's `slots`.
    pub parallel: Option<usize>,
    /// ollama: `OLLAMA_MULTIUSER_CACHE=1` (default true): a request on a free
    /// slot copies the longest cached prefix from another slot instead of
    /// evaluating it again, so the enrichment endpoint is given
    /// `shared_prefix_cache = true` (warm a document once, then fan out).
    pub multiuser_cache: Option<bool>,
    /// ollama: the keys' and values' type, `OLLAMA_KV_CACHE_TYPE` (`f16`,
    /// `q8_0`, `q4_0`; Ollama's default f16). A quantised cache needs flash
    /// attention, so `OLLAMA_FLASH_ATTENTION=1` comes with it. Ollama sizes
    /// the cache as `num_ctx` x `parallel` tokens: `q8_0` halves it, which is
    /// what lets a GPU run more slots (see docs/BENCHMARKS.md, enrichment).
    pub kv_cache_type: Option<String>,
    /// ollama: the enrichment endpoint's `context_tokens`, the largest
    /// `num_ctx` the DataFactory asks of it (default: the configuration's,
    /// 8,192; a longer document is windowed). Ollama holds `num_ctx` x
    /// `parallel` tokens of keys and values.
    pub context_tokens: Option<usize>,
    /// ollama: a model to load once the server is up (a warm-up request).
    pub warm: Option<String>,
    /// serve: enrich with this model on every Ollama service of the file
    /// (`enrichment.endpoints`, one per instance), as the seed's DataFactory
    /// used its six instances.
    pub enrichment_model: Option<String>,
}

impl Service {
    fn ollama_parallel(&self) -> usize {
        self.parallel.unwrap_or(4)
    }

    fn ollama_multiuser_cache(&self) -> bool {
        self.multiuser_cache.unwrap_or(true)
    }

    /// `http://host:port`: its `url`, or loopback for a service listening on every address.
    pub fn base_url(&self) -> String {
        match (&self.url, self.port) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, port) => format!("http://{}", local_address(&self.host, port.unwrap_or_default())),
        }
    }

    /// What `up` and `status` check: `/health`, or Ollama's `/api/tags`.
    pub fn health_url(&self) -> String {
        format!("{}{}", self.base_url(), self.kind.health_path())
    }
}

/// Where a service listens when its `host` is left out.
fn default_host(kind: Kind) -> &'static str {
    match kind {
        Kind::Ollama => "0.0.0.0",
        _ => "127.0.0.1",
    }
}

impl Deployment {
    /// Reads a deployment file.
    pub fn load(path: &Path) -> Result<Deployment, DeployError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeployError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = base.canonicalize().unwrap_or(base);
        Deployment::parse(&text, &path.display().to_string(), base)
    }

    /// The seed's layout, with paths relative to `base_dir`.
    pub fn seed(base_dir: PathBuf) -> Deployment {
        Deployment::parse(SEED_LAYOUT, "built-in seed layout", base_dir).expect("the seed layout is valid")
    }

    /// Parses and validates `text` (`source` names it in errors).
    pub fn parse(text: &str, source: &str, base_dir: PathBuf) -> Result<Deployment, DeployError> {
        let mut d: Deployment = toml::from_str(text)
            .map_err(|e| DeployError::Parse { path: source.to_string(), message: e.to_string() })?;
        d.base_dir = base_dir;
        d.source = source.to_string();
        for s in d.services.iter_mut().filter(|s| s.host.is_empty()) {
            s.host = default_host(s.kind).to_string();
        }
        d.validate()?;
        Ok(d)
    }

    fn invalid(&self, key: String, message: impl Into<String>) -> DeployError {
        DeployError::Invalid { path: self.source.clone(), key, message: message.into() }
    }

    fn validate(&self) -> Result<(), DeployError> {
        if self.services.is_empty() {
            return Err(self.invalid("service".into(), "no [[service]] is given"));
        }
        if self.launcher.ollama.trim().is_empty() {
            return Err(self.invalid("launcher.ollama".into(), "must not be empty"));
        }
        if self.launcher.health_timeout_s == 0 {
            return Err(self.invalid("launcher.health_timeout_s".into(), "must be at least 1"));
        }
        if self.launcher.max_backoff_s == 0 {
            return Err(self.invalid("launcher.max_backoff_s".into(), "must be at least 1"));
        }
        let mut names = HashMap::new();
        let mut ports = HashMap::new();
        let mut gpus = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |field: &str| format!("service[{i}] ({:?}).{field}", s.name);
            if s.name.is_empty()
                || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || s.name.starts_with('.')
            {
                return Err(self.invalid(
                    key("name"),
                    "must be letters, digits, '-', '_' or '.' (it names the log file)",
                ));
            }
            if let Some(other) = names.insert(s.name.as_str(), i) {
                return Err(self.invalid(key("name"), format!("is also the name of service[{other}]")));
            }
            if s.kind != Kind::Ollama
                && (s.keep_alive.is_some()
                    || s.warm.is_some()
                    || s.parallel.is_some()
                    || s.multiuser_cache.is_some()
                    || s.kv_cache_type.is_some()
                    || s.context_tokens.is_some())
            {
                return Err(self.invalid(
                    key("keep_alive"),
                    "keep_alive, warm, parallel, multiuser_cache, kv_cache_type and context_tokens are for \
                     ollama services",
                ));
            }
            if s.context_tokens.is_some_and(|c| c < 256) {
                return Err(self.invalid(key("context_tokens"), "must be at least 256"));
            }
            if let Some(t) = &s.kv_cache_type {
                if !["f16", "q8_0", "q4_0"].contains(&t.as_str()) {
                    return Err(self.invalid(
                        key("kv_cache_type"),
                        format!("is {t:?}; Ollama takes \"f16\", \"q8_0\" or \"q4_0\""),
                    ));
                }
            }
            if s.parallel == Some(0) {
                return Err(self.invalid(key("parallel"), "must be at least 1"));
            }
            if let Some(model) = &s.enrichment_model {
                if s.kind != Kind::Serve {
                    return Err(self.invalid(key("enrichment_model"), "is for serve services"));
                }
                if model.trim().is_empty() || model.contains(['"', '\\']) {
                    return Err(
                        self.invalid(key("enrichment_model"), format!("is not a model name: {model:?}"))
                    );
                }
                if !self.services.iter().any(|o| o.kind == Kind::Ollama) {
                    return Err(self.invalid(key("enrichment_model"), "the file has no ollama service"));
                }
                if s.settings.keys().any(|k| k.starts_with("enrichment.endpoints")) {
                    return Err(self.invalid(
                        key("enrichment_model"),
                        "sets enrichment.endpoints; do not set them in settings too",
                    ));
                }
            }
            if s.kind == Kind::Ollama && (!s.settings.is_empty() || s.config.is_some()) {
                return Err(self.invalid(
                    key("settings"),
                    "settings and config are for serve, rerank and analyze services; use env for ollama",
                ));
            }
            if let Some(url) = &s.url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(
                        self.invalid(key("url"), format!("must start with http:// or https://, is {url:?}"))
                    );
                }
                if s.port.is_some() || s.gpu.is_some() {
                    return Err(self.invalid(
                        key("url"),
                        "a service with a url runs elsewhere: give its port in the url and no gpu",
                    ));
                }
                continue;
            }
            let Some(port) = s.port else {
                return Err(
                    self.invalid(key("port"), "is required (or a url for a service that runs elsewhere)")
                );
            };
            if port == 0 {
                return Err(self.invalid(key("port"), "must not be 0"));
            }
            if s.host.parse::<std::net::IpAddr>().is_err() {
                return Err(self.invalid(key("host"), format!("must be an IP address, is {:?}", s.host)));
            }
            if let Some(other) = ports.insert(port, i) {
                return Err(self.invalid(key("port"), format!("{port} is also the port of service[{other}]")));
            }
            if let Some(gpu) = s.gpu.filter(|_| !self.launcher.share_gpus) {
                if let Some(other) = gpus.insert(gpu, i) {
                    return Err(self.invalid(
                        key("gpu"),
                        format!(
                            "GPU {gpu} is also given to service[{other}] (one GPU per service; \
                             launcher.share_gpus = true allows it)"
                        ),
                    ));
                }
            }
            for (k, v) in &s.settings {
                let field = format!("settings.{k:?}");
                if k.is_empty()
                    || !k.split('.').all(|p| {
                        !p.is_empty()
                            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    })
                {
                    return Err(
                        self.invalid(key(&field), "must be a configuration key such as \"embedding.device\"")
                    );
                }
                if setting_value(v).is_none() {
                    return Err(self.invalid(
                        key(&field),
                        "must be a string, number or boolean (put lists and tables in the config file)",
                    ));
                }
            }
            for k in s.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(
                        self.invalid(key(&format!("env.{k:?}")), "is not an environment variable name")
                    );
                }
            }
        }
        Ok(())
    }

    /// The path of a file named in `[launcher]`, resolved against the base folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.resolve(&self.launcher.state)
    }

    /// The state file's path made absolute (a service runs in the base
    /// folder, but reads the path from its environment).
    fn absolute_state_path(&self) -> String {
        let path = self.state_path();
        let path = if path.is_absolute() {
            path
        } else {
            std::env::current_dir().map(|d| d.join(&path)).unwrap_or(path)
        };
        path.display().to_string()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.resolve(&self.launcher.logs)
    }

    /// What `up` would start, checked: for the DataFactory's own services the
    /// configuration each would read (file, environment, settings) is loaded
    /// and validated here, so a wrong key fails before anything starts.
    pub fn plan(&self, datafactory: &Path) -> Result<Vec<Planned>, DeployError> {
        let mut out = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let health_base = s.base_url();
            let health_url = s.health_url();
            if s.url.is_some() {
                out.push(Planned { service: s.clone(), base_url: health_base, health_url, launch: None });
                continue;
            }
            let port = s.port.unwrap_or_default();
            let listen = if s.host.contains(':') {
                format!("[{}]:{port}", s.host)
            } else {
                format!("{}:{port}", s.host)
            };
            let mut env = vec![
                // NVML and nvidia-smi number GPUs by PCI bus; CUDA, by default,
                // fastest first. The deployment file uses the former.
                ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
                // No GPU: the service sees none, rather than all of them.
                ("CUDA_VISIBLE_DEVICES".to_string(), s.gpu.map(|g| g.to_string()).unwrap_or_default()),
            ];
            let (program, args) = match s.kind {
                Kind::Ollama => {
                    env.push(("OLLAMA_HOST".into(), listen));
                    env.push((
                        "OLLAMA_KEEP_ALIVE".into(),
                        s.keep_alive.clone().unwrap_or_else(|| "30m".into()),
                    ));
                    env.push(("OLLAMA_NUM_PARALLEL".into(), s.ollama_parallel().to_string()));
                    if s.ollama_multiuser_cache() {
                        env.push(("OLLAMA_MULTIUSER_CACHE".into(), "1".into()));
                    }
                    if let Some(t) = &s.kv_cache_type {
                        env.push(("OLLAMA_KV_CACHE_TYPE".into(), t.clone()));
                        if t != "f16" {
                            env.push(("OLLAMA_FLASH_ATTENTION".into(), "1".into()));
                        }
                    }
                    (PathBuf::from(&self.launcher.ollama), vec!["serve".to_string()])
                }
                kind => {
                    let command = match kind {
                        Kind::Serve => "serve",
                        Kind::Rerank => "rerank-server",
                        _ => "analyze-server",
                    };
                    let mut args = Vec::new();
                    let config = s.config.as_ref().map(|c| self.resolve(c));
                    if let Some(c) = &config {
                        args.push("--config".to_string());
                        args.push(c.display().to_string());
                    }
                    args.extend([command.to_string(), "--address".to_string(), listen]);
                    for (k, v) in &s.settings {
                        let var = format!("DATAFACTORY_{}", k.to_uppercase().replace('.', "__"));
                        env.push((var, setting_value(v).unwrap_or_default()));
                    }
                    if let Some(model) = &s.enrichment_model {
                        // figment reads an array of tables from one variable.
                        let endpoints: Vec<String> = self
                            .ollama_endpoints(model)
                            .iter()
                            .map(|e| {
                                // A TOML inline table (JSON's strings, numbers and booleans are TOML's).
                                let pairs: Vec<String> = e.iter().map(|(k, v)| format!("{k}={v}")).collect();
                                format!("{{{}}}", pairs.join(","))
                            })
                            .collect();
                        env.push((
                            "DATAFACTORY_ENRICHMENT__ENDPOINTS".into(),
                            format!("[{}]", endpoints.join(",")),
                        ));
                    }
                    if kind == Kind::Serve {
                        // Where the service finds this deployment for its
                        // `/deployment` (the console's System view).
                        env.push((crate::state::STATE_VAR.to_string(), self.absolute_state_path()));
                    }
                    self.check_config(i, s, config.as_deref())?;
                    (datafactory.to_path_buf(), args)
                }
            };
            env.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.push(Planned {
                service: s.clone(),
                base_url: health_base,
                health_url,
                launch: Some(Launch {
                    program,
                    args,
                    env,
                    cwd: self.base_dir.clone(),
                    log: self.logs_dir().join(format!("{}.log", s.name)),
                }),
            });
        }
        Ok(out)
    }

    /// The file's Ollama services as enrichment endpoints with this model,
    /// in file order, as (key, value) pairs in the order written.
    fn ollama_endpoints(&self, model: &str) -> Vec<Vec<(&'static str, serde_json::Value)>> {
        self.services
            .iter()
            .filter(|o| o.kind == Kind::Ollama)
            .map(|o| {
                let mut e = vec![
                    ("kind", "ollama".into()),
                    ("url", o.base_url().into()),
                    ("model", model.into()),
                    ("slots", o.ollama_parallel().into()),
                    ("shared_prefix_cache", o.ollama_multiuser_cache().into()),
                ];
                if let Some(c) = o.context_tokens {
                    e.push(("context_tokens", c.into()));
                }
                e
            })
            .collect()
    }

    /// Loads the configuration a DataFactory service would read, with its settings.
    fn check_config(&self, i: usize, s: &Service, config: Option<&Path>) -> Result<(), DeployError> {
        let mut overrides = serde_json::Map::new();
        for (k, v) in &s.settings {
            let mut parts: Vec<&str> = k.split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut map = &mut overrides;
            for p in parts {
                let entry = map.entry(p.to_string()).or_insert_with(|| serde_json::json!({}));
                if !entry.is_object() {
                    *entry = serde_json::json!({});
                }
                map = entry.as_object_mut().expect("an object");
            }
            map.insert(last.to_string(), toml_to_json(v));
        }
        if let Some(model) = &s.enrichment_model {
            let endpoints: Vec<_> = self
                .ollama_endpoints(model)
                .into_iter()
                .map(|e| serde_json::Value::Object(e.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
                .collect();
            let enrichment = overrides.entry("enrichment").or_insert_with(|| serde_json::json!({}));
            if let Some(e) = enrichment.as_object_mut() {
                e.insert("endpoints".into(), endpoints.into());
            }
        }
        let default_file = self.base_dir.join(datafactory_core::config::DEFAULT_CONFIG_FILE);
        let file = config.map(Path::to_path_buf).or_else(|| default_file.is_file().then_some(default_file));
        let invalid = |message: String| {
            self.invalid(
                format!("service[{i}] ({:?}).settings", s.name),
                format!("the configuration it would run with is not valid: {message}"),
            )
        };
        // What the service reads: defaults, its file, its settings (it gets no
        // other DATAFACTORY_* variable: see `supervisor::spawn`). As
        // `Config::load` does, without this process's environment.
        use figment::providers::{Format, Serialized, Toml};
        let mut figment = figment::Figment::from(Serialized::defaults(datafactory_core::Config::default()));
        if let Some(f) = &file {
            if !f.is_file() {
                return Err(invalid(format!("the configuration file {} does not exist", f.display())));
            }
            figment = figment.merge(Toml::file_exact(f));
        }
        let config: datafactory_core::Config = figment
            .merge(Serialized::defaults(&overrides))
            .extract()
            .map_err(|e| invalid(format!("configuration: {e}")))?;
        config.validate().map_err(|e| invalid(e.to_string()))?;
        // The service refuses an open non-loopback address itself; say so
        // here, before anything starts.
        let open = s.host.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback())
            && config.server.api_keys.is_empty()
            && !config.server.allow_insecure;
        if open {
            return Err(self.invalid(
                format!("service[{i}] ({:?}).host", s.name),
                format!(
                    "{} is not loopback and the service has no API key: set \"server.api_keys\" in its \
                     settings (or its configuration file), or \"server.allow_insecure\" = true to run it \
                     open, or leave host out (127.0.0.1)",
                    s.host
                ),
            ));
        }
        Ok(())
    }
}

/// A service with what is needed to start and check it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub service: Service,
    /// `http://host:port` (loopback for a service listening on every address).
    pub base_url: String,
    pub health_url: String,
    /// None: it runs elsewhere (`url`).
    pub launch: Option<Launch>,
}

/// How to start one service.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set on top of the launcher's own environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
}

/// Where to reach a service that listens on `host`: loopback for "every address".
fn local_address(host: &str, port: u16) -> String {
    match host {
        "0.0.0.0" => format!("127.0.0.1:{port}"),
        "::" => format!("[::1]:{port}"),
        h if h.contains(':') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    }
}

/// A setting as the string its `DATAFACTORY_*` variable carries.
fn setting_value(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        // An inline array (`server.api_keys`), which figment reads from one variable.
        toml::Value::Array(_) => Some(v.to_string()),
        _ => None,
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => s.clone().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Array(a) => a.iter().map(toml_to_json).collect::<Vec<_>>().into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Deployment, DeployError> {
        Deployment::parse(text, "test.toml", std::env::temp_dir())
    }

    #[test]
    fn the_seed_layout_is_one_gpu_per_service() {
        let d = Deployment::seed(std::env::temp_dir());
        let plan = d.plan(Path::new("/bin/datafactory")).unwrap();
        let by_name = |n: &str| plan.iter().find(|p| p.service.name == n).unwrap();
        let env = |p: &Planned, k: &str| {
            p.launch.as_ref().unwrap().env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap()
        };
        assert_eq!(env(by_name("datafactory"), "CUDA_VISIBLE_DEVICES"), "0");
        assert_eq!(env(by_name("datafactory"), "DATAFACTORY_EMBEDDING__DEVICE"), "cuda");
        let endpoints = env(by_name("datafactory"), "DATAFACTORY_ENRICHMENT__ENDPOINTS");
        assert_eq!(endpoints.matches("model=\"llama3.1:8b\"").count(), 6, "{endpoints}");
        assert_eq!(
            endpoints.matches("slots=8,shared_prefix_cache=true,context_tokens=49152}").count(),
            6,
            "{endpoints}"
        );
        assert!(endpoints.starts_with("[{kind=\"ollama\",url=\"http://127.0.0.1:11434\""), "{endpoints}");
        assert!(endpoints.contains("url=\"http://127.0.0.1:11439\""), "{endpoints}");
        assert_eq!(env(by_name("reranker"), "CUDA_VISIBLE_DEVICES"), "1");
        assert_eq!(env(by_name("analyzer"), "CUDA_VISIBLE_DEVICES"), "");
        // The DataFactory is told where the state file is (for its
        // `/deployment`), as an absolute path; the other services are not.
        let state = env(by_name("datafactory"), crate::state::STATE_VAR);
        assert_eq!(Path::new(&state), std::env::temp_dir().join("datafactory-launcher.json"));
        for other in ["reranker", "analyzer", "ollama-gpu2"] {
            let launch = by_name(other).launch.as_ref().unwrap();
            assert!(launch.env.iter().all(|(k, _)| k != crate::state::STATE_VAR), "{other}");
        }
        for g in 2..8u32 {
            let p = by_name(&format!("ollama-gpu{g}"));
            assert_eq!(env(p, "CUDA_VISIBLE_DEVICES"), g.to_string());
            assert_eq!(env(p, "OLLAMA_HOST"), format!("0.0.0.0:{}", 11434 + g - 2));
            assert_eq!(env(p, "OLLAMA_KEEP_ALIVE"), "30m");
            assert_eq!(env(p, "OLLAMA_NUM_PARALLEL"), "8");
            assert_eq!(env(p, "OLLAMA_MULTIUSER_CACHE"), "1");
            assert_eq!(env(p, "OLLAMA_KV_CACHE_TYPE"), "q8_0");
            assert_eq!(env(p, "OLLAMA_FLASH_ATTENTION"), "1");
            assert_eq!(p.health_url, format!("http://127.0.0.1:{}/api/tags", 11434 + g - 2));
        }
        assert_eq!(by_name("datafactory").health_url, "http://127.0.0.1:9000/health");
        assert_eq!(plan.len(), 9);
    }

    #[test]
    fn the_launcher_guide_shows_the_seed_layout() {
        let guide = include_str!("../../../docs/LAUNCHER.md");
        assert!(guide.contains(SEED_LAYOUT), "docs/LAUNCHER.md must show deploy/seed.toml as it is");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[[service]]\nname = \"a\"\nkind = \"serve\"\nport = 9000\ngpus = 1\n").unwrap_err();
        assert!(e.to_string().contains("gpus"), "{e}");
        let e = parse("[[service]]\nname = \"a\"\nkind = \"embedder\"\nport = 9000\n").unwrap_err();
        assert!(e.to_string().contains("embedder"), "{e}");
        let two = "[[service]]\nname = \"a\"\nkind = \"serve\"\nport = 9000\ngpu = 0\n\
                   [[service]]\nname = \"b\"\nkind = \"rerank\"\nport = 9000\n";
        let e = parse(two).unwrap_err();
        assert!(
            e.to_string().contains("service[1] (\"b\").port: 9000 is also the port of service[0]"),
            "{e}"
        );
        let gpus = "[[service]]\nname = \"a\"\nkind = \"serve\"\nport = 9000\ngpu = 0\n\
                    [[service]]\nname = \"b\"\nkind = \"rerank\"\nport = 9001\ngpu = 0\n";
        let e = parse(gpus).unwrap_err();
        assert!(e.to_string().contains("service[1] (\"b\").gpu: GPU 0 is also given"), "{e}");
        parse(&format!("[launcher]\nshare_gpus = true\n{gpus}")).unwrap();
        let e = parse("[[service]]\nname = \"a\"\nkind = \"ollama\"\n").unwrap_err();
        assert!(e.to_string().contains("service[0] (\"a\").port: is required"), "{e}");
        let e = parse("[[service]]\nname = \"a/b\"\nkind = \"ollama\"\nport = 1\n").unwrap_err();
        assert!(e.to_string().contains(".name"), "{e}");
    }

    /// The DataFactory's services listen on loopback unless told otherwise;
    /// another address needs keys or an explicit `server.allow_insecure`.
    #[test]
    fn an_open_non_loopback_service_fails_the_plan() {
        let d = Deployment::seed(std::env::temp_dir());
        let plan = d.plan(Path::new("/bin/datafactory")).unwrap();
        for p in plan.iter().filter(|p| p.service.kind != Kind::Ollama) {
            let args = &p.launch.as_ref().unwrap().args;
            let listen = &args[args.iter().position(|a| a == "--address").unwrap() + 1];
            assert!(listen.starts_with("127.0.0.1:"), "{}: {listen}", p.service.name);
        }
        let open = "[[service]]\nname = \"an\"\nkind = \"analyze\"\nport = 9100\nhost = \"0.0.0.0\"\n";
        let e = parse(open).unwrap().plan(Path::new("datafactory")).unwrap_err().to_string();
        assert!(
            e.contains("service[0] (\"an\").host")
                && e.contains("server.api_keys")
                && e.contains("allow_insecure"),
            "{e}"
        );
        for extra in [
            "settings = { \"server.api_keys\" = [\"key-0123456789abcdef\"] }\n",
            "settings = { \"server.allow_insecure\" = true }\n",
        ] {
            parse(&format!("{open}{extra}")).unwrap().plan(Path::new("datafactory")).unwrap();
        }
    }

    #[test]
    fn a_wrong_setting_fails_the_plan_naming_the_key() {
        let d = parse(
            "[[service]]\nname = \"df\"\nkind = \"serve\"\nport = 9000\n\
             settings = { \"embedding.devise\" = \"cuda\" }\n",
        )
        .unwrap();
        let e = d.plan(Path::new("datafactory")).unwrap_err().to_string();
        assert!(e.contains("devise"), "{e}");
        let d = parse(
            "[[service]]\nname = \"df\"\nkind = \"serve\"\nport = 9000\n\
             settings = { \"embedding.device\" = \"tpu\" }\n",
        )
        .unwrap();
        let e = d.plan(Path::new("datafactory")).unwrap_err().to_string();
        assert!(e.contains("embedding.device"), "{e}");
    }

    #[test]
    fn more_slots_with_a_quantised_cache() {
        let ollama = "[[service]]\nname = \"o\"\nkind = \"ollama\"\nport = 11434\ngpu = 2\nparallel = 12\n";
        let d = parse(&format!("{ollama}kv_cache_type = \"q8_0\"\n")).unwrap();
        let plan = d.plan(Path::new("datafactory")).unwrap();
        let env: HashMap<_, _> = plan[0].launch.as_ref().unwrap().env.iter().cloned().collect();
        assert_eq!(env["OLLAMA_NUM_PARALLEL"], "12");
        assert_eq!(env["OLLAMA_KV_CACHE_TYPE"], "q8_0");
        assert_eq!(env["OLLAMA_FLASH_ATTENTION"], "1");
        let plan = parse(ollama).unwrap().plan(Path::new("datafactory")).unwrap();
        let env = &plan[0].launch.as_ref().unwrap().env;
        assert!(env.iter().all(|(k, _)| k != "OLLAMA_KV_CACHE_TYPE" && k != "OLLAMA_FLASH_ATTENTION"));
        let e = parse(&format!("{ollama}context_tokens = 100\n")).unwrap_err().to_string();
        assert!(e.contains("context_tokens: must be at least 256"), "{e}");
        let e = parse(&format!("{ollama}kv_cache_type = \"q5_1\"\n")).unwrap_err().to_string();
        assert!(e.contains("kv_cache_type") && e.contains("q8_0"), "{e}");
        let e = parse("[[service]]\nname = \"a\"\nkind = \"serve\"\nport = 9000\nkv_cache_type = \"q8_0\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("are for ollama services"), "{e}");
    }

    #[test]
    fn a_service_elsewhere_is_checked_not_started() {
        let d =
            parse("[[service]]\nname = \"far\"\nkind = \"ollama\"\nurl = \"http://gpu-b:11434/\"\n").unwrap();
        let plan = d.plan(Path::new("datafactory")).unwrap();
        assert!(plan[0].launch.is_none());
        assert_eq!(plan[0].health_url, "http://gpu-b:11434/api/tags");
    }
}

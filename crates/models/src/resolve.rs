//! Finding a model's files: a local directory, the Hugging Face cache, or a
//! download.
//!
//! Why it exists: `embedding.model` is either a directory or a repository id
//! such as `BAAI/bge-m3`, and a machine without network access must work from
//! files that are already there. Resolution never touches the network when the
//! model is found locally, when `embedding.allow_download` is false or when
//! `HF_HUB_OFFLINE` is set; when it cannot find the model it says where it
//! looked, which files it needs and how to provide them.
//!
//! The cache layout is the one `huggingface_hub` writes:
//! `<root>/models--ORG--NAME/refs/<revision>` holds a commit sha and
//! `<root>/models--ORG--NAME/snapshots/<sha>/` the files. The root is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! The lookup itself ([`resolve_model_in`]) takes the root and the offline flag
//! as parameters, so tests need no process-wide environment.

use datafactory_core::config::EmbeddingConfig;
use datafactory_core::EmbedError;
use std::path::{Path, PathBuf};

/// Files that every model needs.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
/// Weights in PyTorch's format, taken when `model.safetensors` is absent.
pub const PYTORCH_WEIGHTS: &str = "pytorch_model.bin";
/// Files read when present: the sentence-transformers layout and bge-m3's sparse head.
pub const OPTIONAL_FILES: [&str; 4] =
    ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "sparse_linear.pt"];

/// The files of one model, all on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// A short, stable name: the repository id, or the directory's name.
    pub name: String,
    /// The directory holding the files (a local directory or a cache snapshot).
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// `model.safetensors`, or `pytorch_model.bin` when there is no safetensors file.
    pub weights: PathBuf,
    /// sentence-transformers' module list (`modules.json`).
    pub modules: Option<PathBuf>,
    /// sentence-transformers' `sentence_bert_config.json` (its `max_seq_length`).
    pub sentence_bert_config: Option<PathBuf>,
    /// The pooling module's `config.json` (the folder named in `modules.json`,
    /// usually `1_Pooling`).
    pub pooling_config: Option<PathBuf>,
    /// bge-m3's sparse head (`sparse_linear.pt`).
    pub sparse_linear: Option<PathBuf>,
}

impl ModelFiles {
    /// Collects a model's files from one directory; fails when a required file
    /// is missing.
    pub fn from_dir(dir: &Path, name: &str) -> Result<ModelFiles, EmbedError> {
        let missing = missing_required(dir);
        if !missing.is_empty() {
            return Err(EmbedError::Unavailable(format!(
                "the model directory {} lacks {}; a model needs {} (or {} instead of \
                 model.safetensors), and may have {}",
                dir.display(),
                missing.join(", "),
                REQUIRED_FILES.join(", "),
                PYTORCH_WEIGHTS,
                OPTIONAL_FILES.join(", "),
            )));
        }
        let existing = |rel: &str| Some(dir.join(rel)).filter(|p| p.is_file());
        let weights = existing("model.safetensors")
            .or_else(|| existing(PYTORCH_WEIGHTS))
            .unwrap_or_else(|| dir.join("model.safetensors"));
        let modules = existing("modules.json");
        let pooling_dir = match &modules {
            Some(path) => pooling_dir_from_modules(path)?,
            None => None,
        }
        .unwrap_or_else(|| "1_Pooling".to_string());
        Ok(ModelFiles {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config: dir.join("config.json"),
            tokenizer: dir.join("tokenizer.json"),
            weights,
            pooling_config: existing(&format!("{pooling_dir}/config.json")),
            modules,
            sentence_bert_config: existing("sentence_bert_config.json"),
            sparse_linear: existing("sparse_linear.pt"),
        })
    }
}

/// Required files absent from `dir` (the weights count as present in either format).
fn missing_required(dir: &Path) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for file in REQUIRED_FILES {
        if dir.join(file).is_file() {
            continue;
        }
        if file == "model.safetensors" && dir.join(PYTORCH_WEIGHTS).is_file() {
            continue;
        }
        missing.push(file);
    }
    missing
}

/// The folder of the `sentence_transformers.models.Pooling` module in `modules.json`.
fn pooling_dir_from_modules(path: &Path) -> Result<Option<String>, EmbedError> {
    #[derive(serde::Deserialize)]
    struct Module {
        #[serde(default)]
        path: String,
        #[serde(rename = "type", default)]
        kind: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| EmbedError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
    let modules: Vec<Module> = serde_json::from_str(&text)
        .map_err(|e| EmbedError::Unavailable(format!("cannot parse {}: {e}", path.display())))?;
    Ok(modules.into_iter().find(|m| m.kind.ends_with(".Pooling")).map(|m| m.path).filter(|p| !p.is_empty()))
}

/// Where resolution looks besides the configuration: the Hugging Face cache
/// root and whether the hub may be contacted at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEnvironment {
    pub cache_root: PathBuf,
    /// `HF_HUB_OFFLINE` is set to a true value.
    pub offline: bool,
}

impl HubEnvironment {
    /// Reads `HF_HUB_CACHE`, `HF_HOME`, `HOME` and `HF_HUB_OFFLINE`.
    pub fn from_env() -> HubEnvironment {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_root = if let Some(dir) = var("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = var("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            let home = var("HOME")
                .or_else(|| var("USERPROFILE"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface").join("hub")
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubEnvironment { cache_root, offline }
    }
}

/// What to resolve: a model named in one section of the configuration
/// (`embedding` or `rerank`), whose key names appear in the error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRequest<'a> {
    /// The configuration section, e.g. `"embedding"`.
    pub section: &'static str,
    /// What the model is for, in messages, e.g. `"embedding model"`.
    pub role: &'static str,
    pub model: &'a str,
    pub revision: &'a str,
    pub allow_download: bool,
    /// Also fetch bge-m3's `sparse_linear.pt` when downloading.
    pub sparse: bool,
}

impl<'a> ModelRequest<'a> {
    /// The embedding model of `[embedding]`.
    pub fn embedding(config: &'a EmbeddingConfig) -> ModelRequest<'a> {
        ModelRequest {
            section: "embedding",
            role: "embedding model",
            model: &config.model,
            revision: &config.revision,
            allow_download: config.allow_download,
            sparse: config.sparse,
        }
    }
}

/// Finds the model named by `config.model` (see the module docs), reading the
/// hub settings from the environment.
pub fn resolve_model(config: &EmbeddingConfig) -> Result<ModelFiles, EmbedError> {
    resolve_request(&ModelRequest::embedding(config), &HubEnvironment::from_env())
}

/// [`resolve_model`] with the cache root and offline flag given.
pub fn resolve_model_in(config: &EmbeddingConfig, hub: &HubEnvironment) -> Result<ModelFiles, EmbedError> {
    resolve_request(&ModelRequest::embedding(config), hub)
}

/// Finds any model (see the module docs) with the cache root and offline flag given.
pub fn resolve_request(request: &ModelRequest, hub: &HubEnvironment) -> Result<ModelFiles, EmbedError> {
    let section = request.section;
    let role = request.role;
    let model = request.model.trim();
    if model.is_empty() {
        return Err(EmbedError::Unavailable(format!("{section}.model is empty: no {role} is configured")));
    }
    // (a) A local directory.
    let as_path = Path::new(model);
    if as_path.is_dir() {
        let name = as_path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| model.to_string());
        return ModelFiles::from_dir(as_path, &name);
    }
    if !looks_like_repo_id(model) {
        return Err(EmbedError::Unavailable(format!(
            "{section}.model {model:?} is neither an existing directory nor a Hugging Face \
             repository id (ORG/NAME); set it to a directory holding {} or to a repository id",
            REQUIRED_FILES.join(", ")
        )));
    }
    // (b) The Hugging Face cache.
    let revision = if request.revision.trim().is_empty() { "main" } else { request.revision.trim() };
    let lookup = lookup_cache(&hub.cache_root, model, revision);
    if let CacheLookup::Found(dir) = &lookup {
        return ModelFiles::from_dir(dir, model);
    }
    // (c) A download.
    if request.allow_download && !hub.offline {
        return download(request, model, revision, &hub.cache_root);
    }
    // (d) Nothing: say where we looked and how to provide the files.
    let why = if hub.offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        format!("{section}.allow_download is false")
    };
    Err(EmbedError::Unavailable(format!(
        "{role} {model:?} (revision {revision:?}) was not found locally and cannot \
         be downloaded ({why}).\n\
         Looked in:\n  - {} (not a directory)\n  - {}\n\
         A model needs {} (or {} instead of model.safetensors); {} are read when present.\n\
         To provide it: set {section}.model to a local directory holding these files; or put \
         the model into the Hugging Face cache at {} (HF_HUB_CACHE or HF_HOME select another \
         cache); or allow the download ({section}.allow_download = true, HF_HUB_OFFLINE unset).",
        std::env::current_dir()
            .map(|cwd| cwd.join(as_path))
            .unwrap_or_else(|_| as_path.to_path_buf())
            .display(),
        lookup.describe(),
        REQUIRED_FILES.join(", "),
        PYTORCH_WEIGHTS,
        OPTIONAL_FILES.join(", "),
        hub.cache_root.display(),
    )))
}

/// `ORG/NAME` (or a bare `NAME`), made of characters the hub allows.
fn looks_like_repo_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    if parts.is_empty() || parts.len() > 2 {
        return false;
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    })
}

/// The outcome of a cache lookup, kept to explain a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheLookup {
    Found(PathBuf),
    /// No `models--ORG--NAME` folder.
    NoRepo(PathBuf),
    /// No ref for the revision (nor a snapshot named like it).
    NoRevision {
        repo: PathBuf,
        revision: String,
    },
    /// The snapshot exists but lacks files.
    Incomplete {
        snapshot: PathBuf,
        missing: Vec<&'static str>,
    },
}

impl CacheLookup {
    fn describe(&self) -> String {
        match self {
            CacheLookup::Found(dir) => dir.display().to_string(),
            CacheLookup::NoRepo(repo) => format!("{} (not in the cache)", repo.display()),
            CacheLookup::NoRevision { repo, revision } => {
                format!("{} (no refs/{revision} nor snapshots/{revision})", repo.display())
            }
            CacheLookup::Incomplete { snapshot, missing } => {
                format!("{} (lacks {})", snapshot.display(), missing.join(", "))
            }
        }
    }
}

fn lookup_cache(root: &Path, repo_id: &str, revision: &str) -> CacheLookup {
    let repo = root.join(format!("models--{}", repo_id.replace('/', "--")));
    if !repo.is_dir() {
        return CacheLookup::NoRepo(repo);
    }
    let sha = std::fs::read_to_string(repo.join("refs").join(revision))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| revision.to_string());
    let snapshot = repo.join("snapshots").join(&sha);
    if !snapshot.is_dir() {
        return CacheLookup::NoRevision { repo, revision: revision.to_string() };
    }
    let missing = missing_required(&snapshot);
    if missing.is_empty() {
        CacheLookup::Found(snapshot)
    } else {
        CacheLookup::Incomplete { snapshot, missing }
    }
}

/// Downloads the model's files into the cache at `cache_root` (hf-hub, with
/// its progress bar). Only called when the model is not found locally and
/// downloads are allowed.
fn download(
    request: &ModelRequest,
    repo_id: &str,
    revision: &str,
    cache_root: &Path,
) -> Result<ModelFiles, EmbedError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let failed = |what: &str, e: &dyn std::fmt::Display| {
        EmbedError::Unavailable(format!(
            "downloading {} {repo_id:?} (revision {revision:?}) into {} failed \
             ({what}): {e}. Without network access, set {}.model to a local directory \
             or populate the Hugging Face cache.",
            request.role,
            cache_root.display(),
            request.section
        ))
    };
    let mut builder =
        ApiBuilder::from_cache(Cache::new(cache_root.to_path_buf())).with_progress(true).with_retries(2);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| failed("client", &e))?;
    let repo = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string()));
    let info = repo.info().map_err(|e| failed("repository listing", &e))?;
    let listed = |name: &str| info.siblings.iter().any(|s| s.rfilename == name);
    tracing::info!(model = repo_id, revision, role = request.role, "downloading the model");
    let get = |name: &str| repo.get(name).map_err(|e| failed(name, &e));

    let config = get("config.json")?;
    let tokenizer = get("tokenizer.json")?;
    let weights = if listed("model.safetensors") || !listed(PYTORCH_WEIGHTS) {
        get("model.safetensors")?
    } else {
        get(PYTORCH_WEIGHTS)?
    };
    let optional = |name: &str| -> Result<Option<PathBuf>, EmbedError> {
        if listed(name) {
            get(name).map(Some)
        } else {
            Ok(None)
        }
    };
    let modules = optional("modules.json")?;
    let pooling_dir = match &modules {
        Some(path) => pooling_dir_from_modules(path)?,
        None => None,
    }
    .unwrap_or_else(|| "1_Pooling".to_string());
    let pooling_config = optional(&format!("{pooling_dir}/config.json"))?;
    let sentence_bert_config = optional("sentence_bert_config.json")?;
    let sparse_linear = if request.sparse { optional("sparse_linear.pt")? } else { None };
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_else(|| cache_root.to_path_buf());
    Ok(ModelFiles {
        name: repo_id.to_string(),
        dir,
        config,
        tokenizer,
        weights,
        modules,
        sentence_bert_config,
        pooling_config,
        sparse_linear,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path, with_pooling: bool) {
        std::fs::create_dir_all(dir).unwrap();
        for f in REQUIRED_FILES {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        if with_pooling {
            std::fs::write(
                dir.join("modules.json"),
                r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                    {"idx":1,"name":"1","path":"1_Pool","type":"sentence_transformers.models.Pooling"}]"#,
            )
            .unwrap();
            std::fs::create_dir_all(dir.join("1_Pool")).unwrap();
            std::fs::write(dir.join("1_Pool/config.json"), "{}").unwrap();
        }
    }

    fn config(model: &str, allow_download: bool) -> EmbeddingConfig {
        EmbeddingConfig { model: model.to_string(), allow_download, ..EmbeddingConfig::default() }
    }

    fn hub(root: &Path, offline: bool) -> HubEnvironment {
        HubEnvironment { cache_root: root.to_path_buf(), offline }
    }

    #[test]
    fn local_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-model");
        write_model(&dir, true);
        let files = resolve_model_in(&config(dir.to_str().unwrap(), false), &hub(tmp.path(), true)).unwrap();
        assert_eq!(files.name, "my-model");
        assert_eq!(files.weights, dir.join("model.safetensors"));
        assert_eq!(files.pooling_config, Some(dir.join("1_Pool/config.json")));
        assert_eq!(files.sparse_linear, None);
    }

    #[test]
    fn local_directory_missing_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), false);
        std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
        let e = resolve_model_in(&config(tmp.path().to_str().unwrap(), true), &hub(tmp.path(), false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks tokenizer.json"), "{e}");
    }

    #[test]
    fn hugging_face_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--ORG--tiny-model");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        write_model(&repo.join("snapshots").join(sha), true);
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{sha}\n")).unwrap();

        let files = resolve_model_in(&config("ORG/tiny-model", false), &hub(tmp.path(), true)).unwrap();
        assert_eq!(files.name, "ORG/tiny-model");
        assert_eq!(files.dir, repo.join("snapshots").join(sha));
        assert!(files.modules.is_some());

        // A revision given as a commit sha needs no ref.
        let mut c = config("ORG/tiny-model", false);
        c.revision = sha.to_string();
        assert!(resolve_model_in(&c, &hub(tmp.path(), true)).is_ok());

        // Another revision is not there.
        c.revision = "v2".to_string();
        let e = resolve_model_in(&c, &hub(tmp.path(), true)).unwrap_err().to_string();
        assert!(e.contains("no refs/v2"), "{e}");
    }

    #[test]
    fn incomplete_snapshot_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--ORG--partial");
        let snapshot = repo.join("snapshots/abc");
        write_model(&snapshot, false);
        std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc").unwrap();
        let e =
            resolve_model_in(&config("ORG/partial", true), &hub(tmp.path(), true)).unwrap_err().to_string();
        assert!(e.contains("lacks model.safetensors"), "{e}");
        assert!(e.contains("HF_HUB_OFFLINE is set"), "{e}");
    }

    #[test]
    fn unavailable_message_says_where_and_how() {
        let tmp = tempfile::tempdir().unwrap();
        let e = resolve_model_in(&config("BAAI/bge-m3", false), &hub(tmp.path(), false)).unwrap_err();
        assert!(matches!(e, EmbedError::Unavailable(_)));
        let e = e.to_string();
        let cache_repo = tmp.path().join("models--BAAI--bge-m3");
        for needle in [
            "\"BAAI/bge-m3\"",
            "embedding.allow_download is false",
            &cache_repo.display().to_string(),
            "config.json, tokenizer.json, model.safetensors",
            "sparse_linear.pt",
            "set embedding.model to a local directory",
            "Hugging Face cache",
            "embedding.allow_download = true",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in: {e}");
        }
    }

    #[test]
    fn not_a_path_nor_an_id() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nowhere/model");
        let e = resolve_model_in(&config(missing.to_str().unwrap(), true), &hub(tmp.path(), false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither an existing directory"), "{e}");
        let e = resolve_model_in(&config("", true), &hub(tmp.path(), false)).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("BAAI/bge-m3"));
        assert!(looks_like_repo_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(looks_like_repo_id("gpt2"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("./rel"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
    }
}

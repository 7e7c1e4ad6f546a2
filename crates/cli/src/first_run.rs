//! What the command line says when there is no embedding model (offline, no
//! cache, a wrong folder): one line that says why search is by words only and
//! how to get meaning search. The loader's full explanation (where it looked,
//! which files a model needs) goes to the log (`-v`).
//!
//! Owns: the wording of that line. Must not: resolve or load models
//! (`datafactory-models` does) or decide the fallback (the callers do).

use datafactory_core::config::EmbeddingConfig;
use std::path::Path;

/// The note for a configured model that cannot be had: `error` is the
/// loader's message (often several lines; its first says why).
pub fn no_model(config: &EmbeddingConfig, error: &str) -> String {
    tracing::info!("the embedding model cannot be loaded: {error}");
    format!("no embedding model, so words only: {}. {}", first_line(error), meaning_search(config))
}

/// The note for remote embedding workers that cannot be reached.
pub fn no_workers(error: &str) -> String {
    tracing::info!("the embedding workers cannot be reached: {error}");
    format!(
        "no embedding workers, so words only: {}. For meaning search, start the workers at \
         embedding.remote_urls, or empty that list to embed in this process",
        first_line(error)
    )
}

/// The note for a search that asks for meaning on a store without vectors.
pub fn words_only_store(config: &EmbeddingConfig) -> String {
    let how = meaning_search(config);
    let how = how.strip_prefix("For meaning search, ").unwrap_or(&how);
    format!(
        "this store was built without an embedding model; for meaning search, ingest again with one: {how}"
    )
}

/// One sentence: how to get meaning search with this configuration.
fn meaning_search(config: &EmbeddingConfig) -> String {
    let model = config.model.trim();
    let folder = "set embedding.model (or DATAFACTORY_EMBEDDING__MODEL) to a local model folder \
                  (config.json, tokenizer.json, model.safetensors)";
    if model.is_empty() || names_a_folder(model) {
        format!(
            "For meaning search, {folder}, or to a Hugging Face id such as {} to download it",
            EmbeddingConfig::default().model
        )
    } else {
        format!(
            "For meaning search, let {model} download once (network access to huggingface.co, \
             HF_HUB_OFFLINE unset, embedding.allow_download = true), or {folder}"
        )
    }
}

/// A path rather than a Hugging Face id (`ORG/NAME`).
fn names_a_folder(model: &str) -> bool {
    let path = Path::new(model);
    path.is_absolute() || model.starts_with('.') || model.split('/').count() > 2 || path.exists()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim().trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model: &str) -> EmbeddingConfig {
        EmbeddingConfig { model: model.to_string(), ..Default::default() }
    }

    #[test]
    fn a_hub_model_out_of_reach_says_download_or_folder_in_one_line() {
        let error =
            "embedding model \"BAAI/bge-m3\" (revision \"main\") was not found locally and cannot be \
                     downloaded (HF_HUB_OFFLINE is set).\nLooked in:\n  - /x\n";
        let note = no_model(&config("BAAI/bge-m3"), error);
        assert_eq!(note.lines().count(), 1, "{note}");
        assert!(
            note.starts_with("no embedding model, so words only: embedding model \"BAAI/bge-m3\""),
            "{note}"
        );
        assert!(note.contains("HF_HUB_OFFLINE is set)."), "{note}");
        assert!(note.contains("let BAAI/bge-m3 download once"), "{note}");
        assert!(note.contains("DATAFACTORY_EMBEDDING__MODEL"), "{note}");
        assert!(!note.contains("Looked in"), "{note}");
    }

    #[test]
    fn a_missing_folder_says_which_files_a_folder_needs() {
        let note = no_model(&config("/models/none"), "embedding.model \"/models/none\" is neither ...");
        assert_eq!(note.lines().count(), 1, "{note}");
        assert!(note.contains("/models/none"), "{note}");
        assert!(note.contains("model.safetensors") && note.contains("BAAI/bge-m3 to download"), "{note}");
        assert!(!note.contains("download once"), "{note}");
    }

    #[test]
    fn a_words_only_store_says_to_ingest_again() {
        let note = words_only_store(&config("BAAI/bge-m3"));
        assert!(note.contains("ingest again") && note.contains("let BAAI/bge-m3 download once"), "{note}");
    }
}

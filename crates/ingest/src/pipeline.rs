//! The pipeline's settings: analyzer, chunker, enricher and embedder, and the
//! fingerprint that says when a stored document must be made again; the query
//! embedding made with the store's own model.
//!
//! Owns `Pipeline`. Runs no stage itself and never writes the store.

use super::*;

/// Tokens kept free for the contextual chunk header (title and heading
/// path) when chunks are budgeted by the embedding model's own length.
pub(crate) const HEADER_RESERVE_TOKENS: usize = 48;

/// Parser, chunker and embedder settings, and their fingerprint.
#[derive(Clone)]
pub struct Pipeline {
    pub(crate) chunker: Chunker,
    pub(crate) analyzer: Analyzer,
    /// Chunk each document by its analysis' plan (`analysis.follow_plan`).
    pub(crate) follow_plan: bool,
    /// The largest chunk a plan may ask for: what the embedding model takes.
    pub(crate) plan_cap: usize,
    pub(crate) embedder: Option<Arc<dyn Embedder>>,
    pub(crate) enricher: Arc<Enricher>,
    pub(crate) include_headings: bool,
    pub(crate) vector_options: Option<VectorOptions>,
    pub(crate) parse_options: ParseOptions,
    pub(crate) max_file_bytes: u64,
    pub(crate) extensions: Vec<String>,
    pub(crate) workers: usize,
    /// Server slots over all LLM endpoints (what sizes an enrichment group).
    pub(crate) llm_slots: usize,
    pub(crate) fingerprint: String,
}

impl Pipeline {
    /// A pipeline without embeddings (words only).
    pub fn new(config: &Config) -> Pipeline {
        Self::with_embedder(config, None)
    }

    /// A pipeline that embeds every chunk with `embedder`; its tokenizer then
    /// budgets the chunks, which also fit the model's input length.
    pub fn with_embedder(config: &Config, embedder: Option<Arc<dyn Embedder>>) -> Pipeline {
        let (counter, chunking, plan_cap): (Arc<dyn TokenCounter>, _, _) = match &embedder {
            Some(e) => {
                let mut chunking = config.chunking.clone();
                let reserve = if config.embedding.include_headings { HEADER_RESERVE_TOKENS } else { 0 };
                let fits = e.max_input_tokens().saturating_sub(reserve).max(16);
                chunking.max_tokens = chunking.max_tokens.min(fits);
                chunking.overlap_tokens = chunking.overlap_tokens.min(chunking.max_tokens / 2);
                (e.token_counter(), chunking, fits)
            }
            None => (Arc::new(HeuristicTokenCounter), config.chunking.clone(), usize::MAX),
        };
        let analyzer = Analyzer::from_config(&config.analysis);
        let chunker = Chunker::new(&chunking, counter);
        let vector_options = embedder.as_ref().map(|e| VectorOptions {
            model: e.model_id().to_string(),
            dimensions: e.dimension(),
            quantization: config.vectors.quantization.clone(),
            connectivity: config.vectors.connectivity,
            expansion_add: config.vectors.expansion_add,
            expansion_search: config.vectors.expansion_search,
            exact_below: config.vectors.exact_below,
        });
        let enricher = Arc::new(Enricher::from_config(&config.enrichment));
        let fingerprint = format!(
            "parser-v{};{};embedding={}{}{};analysis={}{}{}",
            datafactory_parse::PARSER_VERSION,
            chunker.fingerprint(),
            embedder.as_ref().map_or("none", |e| e.model_id()),
            if embedder.is_some() && config.embedding.include_headings { ";headings" } else { "" },
            // Windows over a long chunk's text (one vector each) change its vectors.
            embedder
                .as_ref()
                .filter(|e| e.max_windows() > 1)
                .map(|e| format!(";windows={}", e.max_windows()))
                .unwrap_or_default(),
            analyzer.id(),
            if config.analysis.follow_plan { ";follow_plan" } else { "" },
            enricher.fingerprint().map(|f| format!(";context={f}")).unwrap_or_default(),
        );
        let workers = match config.ingest.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Pipeline {
            chunker,
            analyzer,
            follow_plan: config.analysis.follow_plan,
            plan_cap,
            embedder,
            enricher,
            include_headings: config.embedding.include_headings,
            vector_options,
            parse_options: ParseOptions::from_config(&config.ingest),
            max_file_bytes: config.ingest.max_file_bytes,
            extensions: config.ingest.extensions.iter().map(|e| e.to_ascii_lowercase()).collect(),
            workers,
            llm_slots: config.enrichment.endpoints.iter().map(|e| e.slots).sum(),
            fingerprint,
        }
    }

    /// Everything that decides the stored chunks for the same input.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    pub fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }

    /// Phase 1 and 2 for one document: analyses it, records the analysis in
    /// its metadata (`metadata.analysis`, with `chunked_by`: `plan`,
    /// `override` or `config`), and cuts it by its plan (when
    /// `analysis.follow_plan`, or when `plan` overrides parts of it) or by the
    /// configured chunker. Returns the chunks, the analysis and the seconds it took.
    pub fn analyze_and_chunk(
        &self,
        document: &mut Document,
        plan: Option<&PlanOverride>,
    ) -> (Vec<Chunk>, Analysis, f64) {
        let started = Instant::now();
        let analysis = self.analyzer.analyze(document);
        let seconds = started.elapsed().as_secs_f64();
        let plan = plan.filter(|o| !o.is_empty());
        let (chunker, chunked_by) = match plan {
            Some(o) => (Some(self.chunker.with_plan(&o.apply(&analysis.plan), self.plan_cap)), "override"),
            None if self.follow_plan => (Some(self.chunker.with_plan(&analysis.plan, self.plan_cap)), "plan"),
            None => (None, "config"),
        };
        let chunker = chunker.as_ref().unwrap_or(&self.chunker);
        let mut record = serde_json::to_value(&analysis).unwrap_or_default();
        if let Some(map) = record.as_object_mut() {
            map.insert(
                "chunked_by".into(),
                serde_json::json!({
                    "source": chunked_by,
                    "max_tokens": chunker.max_tokens(),
                    "fingerprint": chunker.fingerprint(),
                }),
            );
        }
        document.metadata.insert("analysis".into(), record);
        (chunker.chunk(document), analysis, seconds)
    }

    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.embedder.as_ref()
    }

    /// The enrichment stage (contexts per chunk).
    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    /// The vector index this pipeline's embeddings go to.
    pub fn vector_options(&self) -> Option<&VectorOptions> {
        self.vector_options.as_ref()
    }

    /// The text embedded for a chunk: with `include_headings`, the document
    /// title and heading path first (a "contextual chunk header").
    /// The chunk's context, when it has one, comes before the chunk (a
    /// heuristic context already holds the title and heading path, so it
    /// replaces them).
    pub fn embedding_text(&self, title: &str, chunk: &Chunk) -> String {
        let context =
            chunk.context.as_ref().map(|c| (c.text.as_str(), c.kind == datafactory_core::ContextKind::Llm));
        self.contextual_text(title, &chunk.heading_path, context, &chunk.text)
    }

    /// [`Pipeline::embedding_text`] from a chunk's parts (a search hit has no
    /// [`Chunk`]): what the reranker reads too. `context` is the chunk's
    /// context and whether the title and heading path go before it (an LLM's
    /// context; a heuristic one already holds them).
    pub fn contextual_text(
        &self,
        title: &str,
        heading_path: &[String],
        context: Option<(&str, bool)>,
        text: &str,
    ) -> String {
        if let Some((context, with_header)) = context.filter(|(c, _)| !c.trim().is_empty()) {
            let mut header = String::new();
            if self.include_headings && with_header {
                if !title.trim().is_empty() {
                    header.push_str(title.trim());
                    header.push('\n');
                }
                if !heading_path.is_empty() {
                    header.push_str(&heading_path.join(" > "));
                    header.push('\n');
                }
            }
            return format!("{header}{}\n\n{text}", context.trim());
        }
        if !self.include_headings {
            return text.to_string();
        }
        let mut header = String::new();
        if !title.trim().is_empty() {
            header.push_str(title.trim());
            header.push('\n');
        }
        if !heading_path.is_empty() {
            header.push_str(&heading_path.join(" > "));
            header.push('\n');
        }
        if header.is_empty() {
            text.to_string()
        } else {
            format!("{header}\n{text}")
        }
    }
}

/// Embeds a search query with the model the store's vectors were made with.
/// None when the store has no vectors (its search says so) or there is no
/// model; None with a note in `notes` when the model is another one.
pub fn query_embedding(
    store: &Store,
    embedder: Option<&dyn Embedder>,
    text: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Embedding>, datafactory_core::EmbedError> {
    let (Some(stored), Some(embedder)) = (store.vector_options(), embedder) else {
        return Ok(None);
    };
    if embedder.model_id() != stored.model {
        notes.push(format!(
            "the store's vectors are from {}, the loaded model is {}: dense retrieval off",
            stored.model,
            embedder.model_id()
        ));
        return Ok(None);
    }
    Ok(embedder.embed(&[text], InputKind::Query)?.pop())
}

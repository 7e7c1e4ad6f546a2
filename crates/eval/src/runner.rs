//! Ingests a set into a fresh store, runs its queries, scores the rankings.

use crate::dataset::{Dataset, DatasetError, RelevanceLevel};
use crate::metrics;
use datafactory_core::config::{FusionMethod, SearchConfig};
use datafactory_core::{
    content_hash, document_id, Chunk, Config, Document, EmbedError, Embedder, Embedding, Format,
    HeuristicTokenCounter, InputKind, Section, TokenCounter,
};
use datafactory_ingest::Pipeline;
use datafactory_store::{DocumentKey, SearchHit, SearchMode, SearchRequest, Store, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The collection the set is stored in.
pub const COLLECTION: &str = "eval";
/// The cut-off of MRR and nDCG.
pub const MRR_NDCG_K: usize = 10;
/// Chunks embedded per call.
const EMBED_GROUP: usize = 256;

/// Whose chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkerChoice {
    /// DataFactory's chunker, with the configured budget.
    Own,
    /// The set's own chunks, each stored as one chunk.
    Given,
}

impl ChunkerChoice {
    pub fn parse_name(s: &str) -> Option<ChunkerChoice> {
        match s {
            "own" => Some(ChunkerChoice::Own),
            "given" => Some(ChunkerChoice::Given),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Modes to run; None: every mode the configuration allows.
    pub modes: Option<Vec<SearchMode>>,
    /// Cut-offs of Pass@k and Recall@k.
    pub ks: Vec<usize>,
    /// Evaluate only the first N queries.
    pub limit_queries: Option<usize>,
    /// None: the set's own chunks when it has them, else DataFactory's.
    pub chunker: Option<ChunkerChoice>,
    /// Fusions the hybrid mode is run with, each over the same ingested store
    /// and the same query embeddings; empty: the configured one only.
    pub fusions: Vec<FusionVariant>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            modes: None,
            ks: vec![5, 10, 20],
            limit_queries: None,
            chunker: None,
            fusions: Vec::new(),
        }
    }
}

/// A fusion to evaluate hybrid search with: a method and, optionally, weights
/// in place of the configured ones.
#[derive(Debug, Clone, PartialEq)]
pub struct FusionVariant {
    pub method: FusionMethod,
    /// Weight by agreement with words (`search.agreement`).
    pub agreement: bool,
    /// (words, dense, sparse); None: `search.weight_*`.
    pub weights: Option<(f32, f32, f32)>,
}

impl FusionVariant {
    /// Parses `METHOD[+agree][:WORDS:DENSE[:SPARSE]]`, e.g. `zscore`,
    /// `rrf:0.5:0.5`, `rrf+agree:0.5:0.5`.
    pub fn parse(spec: &str) -> Result<FusionVariant, String> {
        let mut parts = spec.split(':');
        let head = parts.next().unwrap_or_default().trim();
        let (name, agreement) = match head.strip_suffix("+agree") {
            Some(name) => (name, true),
            None => (head, false),
        };
        let method = FusionMethod::parse_name(name)
            .ok_or_else(|| format!("unknown fusion {name:?} in {spec:?}: use {}", FusionMethod::NAMES))?;
        let weights: Vec<f32> = parts
            .map(|w| match w.trim().parse::<f32>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!("fusion weight {w:?} in {spec:?} is not a number >= 0")),
            })
            .collect::<Result<_, _>>()?;
        let weights = match weights[..] {
            [] => None,
            [words, dense] => Some((words, dense, 0.0)),
            [words, dense, sparse] => Some((words, dense, sparse)),
            _ => {
                return Err(format!(
                    "fusion {spec:?}: give METHOD, METHOD:WORDS:DENSE or METHOD:WORDS:DENSE:SPARSE"
                ))
            }
        };
        Ok(FusionVariant { method, agreement, weights })
    }

    /// The configured fusion.
    pub fn configured(search: &SearchConfig) -> FusionVariant {
        FusionVariant { method: search.fusion_method(), agreement: search.agreement, weights: None }
    }

    /// A label such as `zscore 0.5/0.5` (weights words/dense, then /sparse when used).
    pub fn label(&self, search: &SearchConfig) -> String {
        let (w, d, s) =
            self.weights.unwrap_or((search.weight_words, search.weight_dense, search.weight_sparse));
        let name = format!("{}{}", self.method.as_str(), if self.agreement { "+agree" } else { "" });
        if s > 0.0 {
            format!("{name} {w}/{d}/{s}")
        } else {
            format!("{name} {w}/{d}")
        }
    }

    fn apply(&self, req: &mut SearchRequest<'_>) {
        req.fusion = self.method;
        req.agreement = self.agreement;
        if let Some((w, d, s)) = self.weights {
            (req.weight_words, req.weight_dense, req.weight_sparse) = (w, d, s);
        }
    }
}

/// Told about progress: a stage with its number of steps, then steps done.
pub trait EvalObserver: Sync {
    fn stage(&self, _name: &str, _total: usize) {}
    fn advance(&self, _steps: usize) {}
}

/// An observer that ignores everything.
pub struct QuietEval;
impl EvalObserver for QuietEval {}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("{0}")]
    Invalid(String),
}

/// The result of an evaluation; its JSON shape is `datafactory eval --json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub dataset: DatasetInfo,
    pub store: StoreInfo,
    pub settings: SettingsInfo,
    /// The cut-offs of `pass` and `recall`.
    pub k: Vec<usize>,
    pub modes: Vec<ModeReport>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub format: &'static str,
    pub path: String,
    pub documents: usize,
    /// Queries with at least one golden unit.
    pub queries: usize,
    /// Those evaluated (fewer with `limit_queries`).
    pub evaluated_queries: usize,
    /// `chunk` (golden chunks) or `document` (relevant documents).
    pub relevance: RelevanceLevel,
    pub chunker: ChunkerChoice,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    pub documents: usize,
    pub chunks: usize,
    /// The embedding model's id; null: words only.
    pub embedding_model: Option<String>,
    pub ingest_seconds: f64,
    pub embedding_seconds: f64,
    /// Documents per type, as the analyzer saw them.
    pub document_types: std::collections::BTreeMap<String, usize>,
    /// Documents per language (ISO 639-3; `und`: none found), as the
    /// analyzer saw them: the word index stems each by its language.
    pub document_languages: std::collections::BTreeMap<String, usize>,
}

/// The settings that shape the results.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsInfo {
    /// The chunk budget in effect (own chunker); given chunks are kept whole.
    pub max_tokens: usize,
    pub overlap_tokens: usize,
    /// Own chunker: each document cut by its analysis' plan (`analysis.follow_plan`).
    pub follow_plan: bool,
    pub include_headings: bool,
    pub candidates: usize,
    /// The configured fusion (`search.fusion`).
    pub fusion: &'static str,
    pub agreement: bool,
    pub rrf_k: f32,
    pub weight_words: f32,
    pub weight_dense: f32,
    pub weight_sparse: f32,
    pub title_boost: f32,
    pub heading_boost: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: &'static str,
    /// Hybrid only: the fusion and its weights (words/dense[/sparse]), e.g. `rrf 0.2/0.8`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<String>,
    /// The retrievers that ran.
    pub retrievers: Vec<&'static str>,
    pub queries: usize,
    /// Pass@k by k: share of a query's golden units (chunks or documents)
    /// found in the first k results, averaged over queries.
    pub pass: BTreeMap<usize, f64>,
    /// Recall@k by k: share of a query's relevant documents found in the first
    /// k results (the documents of its golden chunks, for chunk-level sets).
    pub recall: BTreeMap<usize, f64>,
    pub mrr_at_10: f64,
    pub ndcg_at_10: f64,
    pub latency_ms: Latency,
}

/// Query latency (embedding the query and searching), in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub mean: f64,
}

fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Lexical => "lexical",
        SearchMode::Dense => "dense",
        SearchMode::Sparse => "sparse",
        SearchMode::Hybrid => "hybrid",
    }
}

/// Ingests `dataset` into a fresh store in `store_dir` with the configured
/// pipeline, runs its queries in each mode, and scores them.
pub fn evaluate(
    dataset: &Dataset,
    config: &Config,
    embedder: Option<Arc<dyn Embedder>>,
    store_dir: &Path,
    settings: &EvalSettings,
    observer: &dyn EvalObserver,
) -> Result<EvalReport, EvalError> {
    let chunker = match settings.chunker {
        Some(ChunkerChoice::Given) if !dataset.has_given_chunks() => {
            return Err(EvalError::Invalid(format!(
                "{} has no chunks of its own: use --chunker own",
                dataset.name
            )))
        }
        Some(c) => c,
        None if dataset.has_given_chunks() => ChunkerChoice::Given,
        None => ChunkerChoice::Own,
    };
    let mut ks = settings.ks.clone();
    ks.retain(|&k| k > 0);
    ks.sort_unstable();
    ks.dedup();
    if ks.is_empty() {
        return Err(EvalError::Invalid("no cut-off k above 0".into()));
    }
    let mut notes = dataset.notes.clone();
    let modes = choose_modes(settings.modes.as_deref(), embedder.as_deref(), &mut notes)?;
    let store = Store::open(store_dir)?;
    if store.stats()?.documents > 0 {
        return Err(EvalError::Invalid(format!("{} is not an empty store", store_dir.display())));
    }
    let pipeline = Pipeline::with_embedder(config, embedder.clone());
    let (store_info, ids) = ingest(dataset, &pipeline, chunker, &store, observer)?;

    let mut queries: Vec<_> = dataset.queries.iter().collect();
    if let Some(n) = settings.limit_queries {
        queries.truncate(n);
    }
    let top_k = ks.last().copied().unwrap_or(MRR_NDCG_K).max(MRR_NDCG_K);
    // Each query embedded once, timed, and reused by every mode and fusion.
    let mut embeddings: Vec<(Option<Embedding>, f64)> = Vec::with_capacity(queries.len());
    let embed_query = |text: &str| -> Result<(Option<Embedding>, f64), EvalError> {
        let started = Instant::now();
        let e = match &embedder {
            Some(e) => e.embed(&[text], InputKind::Query)?.pop(),
            None => None,
        };
        Ok((e, started.elapsed().as_secs_f64() * 1000.0))
    };
    if embedder.is_some() && modes.iter().any(|&m| m != SearchMode::Lexical) {
        observer.stage("queries (embedding)", queries.len());
        // One untimed query first: the model's first call warms it up.
        if let Some(q) = queries.first() {
            embed_query(&q.text)?;
        }
        for q in &queries {
            embeddings.push(embed_query(&q.text)?);
            observer.advance(1);
        }
    }
    let fusions = if settings.fusions.is_empty() {
        vec![FusionVariant::configured(&config.search)]
    } else {
        settings.fusions.clone()
    };
    let runs: Vec<(SearchMode, Option<&FusionVariant>)> = modes
        .iter()
        .flat_map(|&m| match m {
            SearchMode::Hybrid => fusions.iter().map(|f| (m, Some(f))).collect::<Vec<_>>(),
            _ => vec![(m, None)],
        })
        .collect();
    let mut reports = Vec::with_capacity(runs.len());
    for (mode, fusion) in runs {
        let label = fusion.map(|f| f.label(&config.search));
        let stage = match &label {
            Some(l) => format!("queries ({}, {l})", mode_name(mode)),
            None => format!("queries ({})", mode_name(mode)),
        };
        observer.stage(&stage, queries.len());
        let run = |i: usize, text: &str| -> Result<(datafactory_store::SearchResults, f64), EvalError> {
            let (embedding, embed_ms) = match embeddings.get(i) {
                Some((e, ms)) if mode != SearchMode::Lexical => (e.as_ref(), *ms),
                _ => (None, 0.0),
            };
            let started = Instant::now();
            let mut req = SearchRequest {
                embedding,
                collection: Some(COLLECTION),
                ..SearchRequest::new(text, mode, top_k, &config.search)
            };
            if let Some(f) = fusion {
                f.apply(&mut req);
            }
            let results = store.search(&req)?;
            Ok((results, embed_ms + started.elapsed().as_secs_f64() * 1000.0))
        };
        // One untimed query first: indexes built on first use are not query time.
        if let Some(q) = queries.first() {
            run(0, &q.text)?;
        }
        let mut per_query = QueryScores::default();
        let mut retrievers = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            let (results, ms) = run(i, &q.text)?;
            // (The store explains missing vectors even to a lexical search.)
            for n in results.notes.into_iter().filter(|_| mode != SearchMode::Lexical) {
                if !notes.contains(&n) {
                    notes.push(n);
                }
            }
            retrievers = results.retrievers;
            per_query.add(q, &results.hits, &ids, &ks, ms);
            observer.advance(1);
        }
        reports.push(per_query.report(mode, label, retrievers, &ks));
    }

    let c = &config.search;
    Ok(EvalReport {
        dataset: DatasetInfo {
            name: dataset.name.clone(),
            format: dataset.format.as_str(),
            path: dataset.path.display().to_string(),
            documents: dataset.documents.len(),
            queries: dataset.queries.len(),
            evaluated_queries: queries.len(),
            relevance: dataset.level,
            chunker,
        },
        store: store_info,
        settings: SettingsInfo {
            max_tokens: pipeline.chunker().max_tokens(),
            overlap_tokens: config.chunking.overlap_tokens,
            follow_plan: config.analysis.follow_plan,
            include_headings: config.embedding.include_headings,
            candidates: c.candidates,
            fusion: c.fusion_method().as_str(),
            agreement: c.agreement,
            rrf_k: c.rrf_k,
            weight_words: c.weight_words,
            weight_dense: c.weight_dense,
            weight_sparse: c.weight_sparse,
            title_boost: c.title_boost,
            heading_boost: c.heading_boost,
        },
        k: ks,
        modes: reports,
        notes,
    })
}

/// The modes to run: those asked for (each must be possible), or all possible.
fn choose_modes(
    asked: Option<&[SearchMode]>,
    embedder: Option<&dyn Embedder>,
    notes: &mut Vec<String>,
) -> Result<Vec<SearchMode>, EvalError> {
    let sparse = embedder.is_some_and(|e| e.produces_sparse());
    let possible = |m: SearchMode| match m {
        SearchMode::Lexical => Ok(()),
        SearchMode::Dense | SearchMode::Hybrid if embedder.is_none() => {
            Err(format!("mode {} needs an embedding model, and none is loaded", mode_name(m)))
        }
        SearchMode::Sparse if !sparse => {
            Err("mode sparse needs a model with sparse weights (bge-m3's sparse head)".to_string())
        }
        _ => Ok(()),
    };
    match asked {
        Some(list) if !list.is_empty() => {
            let mut modes = Vec::new();
            for &m in list {
                possible(m).map_err(EvalError::Invalid)?;
                if !modes.contains(&m) {
                    modes.push(m);
                }
            }
            Ok(modes)
        }
        _ => {
            let all = [SearchMode::Lexical, SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid];
            let modes: Vec<SearchMode> = all.into_iter().filter(|&m| possible(m).is_ok()).collect();
            if embedder.is_none() {
                notes.push("no embedding model: only the lexical mode runs".to_string());
            }
            Ok(modes)
        }
    }
}

/// Stores every document of the set; returns what was stored and the store's
/// document id → the set's document index.
fn ingest(
    dataset: &Dataset,
    pipeline: &Pipeline,
    chunker: ChunkerChoice,
    store: &Store,
    observer: &dyn EvalObserver,
) -> Result<(StoreInfo, HashMap<String, usize>), EvalError> {
    let started = Instant::now();
    if let Some(options) = pipeline.vector_options() {
        store.enable_vectors(options)?;
    }
    let counter: Arc<dyn TokenCounter> = match pipeline.embedder() {
        Some(e) => e.token_counter(),
        None => Arc::new(HeuristicTokenCounter),
    };
    let fingerprint = match chunker {
        ChunkerChoice::Own => pipeline.fingerprint().to_string(),
        ChunkerChoice::Given => format!("{};chunks=given", pipeline.fingerprint()),
    };
    let mut ids = HashMap::with_capacity(dataset.documents.len());
    // (key, document, chunks) of every document, cut first so progress can count chunks.
    let mut prepared = Vec::with_capacity(dataset.documents.len());
    let mut document_types = std::collections::BTreeMap::new();
    let mut document_languages = std::collections::BTreeMap::new();
    for (index, d) in dataset.documents.iter().enumerate() {
        let mut document = store_document(d, chunker);
        // Every document is analysed (its type, its language: the word index
        // stems by it); the set's own chunks replace DataFactory's when given.
        let (own, analysis, _) = pipeline.analyze_and_chunk(&mut document, None);
        *document_types.entry(analysis.doc_type.as_str().to_string()).or_default() += 1;
        let language = analysis.language.as_ref().map_or("und", |l| l.code.as_str());
        *document_languages.entry(language.to_string()).or_default() += 1;
        let chunks = match chunker {
            ChunkerChoice::Own => own,
            ChunkerChoice::Given => given_chunks(&document, counter.as_ref()),
        };
        let id = document_id(COLLECTION, &format!("eval:{index}:{}", d.id));
        ids.insert(id.clone(), index);
        let key = DocumentKey {
            id,
            collection: COLLECTION.to_string(),
            source: format!("{}#{}", dataset.path.display(), d.id),
            content_hash: content_hash(d.text.as_bytes()),
            pipeline: fingerprint.clone(),
            byte_size: d.text.len() as u64,
        };
        prepared.push((key, document, chunks));
    }
    let total_chunks: usize = prepared.iter().map(|p| p.2.len()).sum();
    observer.stage("ingest (chunks)", total_chunks);

    let mut embedding_seconds = 0.0;
    let mut rest = prepared.as_slice();
    while !rest.is_empty() {
        // A group of whole documents with about EMBED_GROUP chunks.
        let mut n = 0;
        let mut chunks_in_group = 0;
        while n < rest.len() && (n == 0 || chunks_in_group + rest[n].2.len() <= EMBED_GROUP) {
            chunks_in_group += rest[n].2.len();
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let mut vectors = match pipeline.embedder() {
            Some(e) if chunks_in_group > 0 => {
                let texts: Vec<String> = group
                    .iter()
                    .flat_map(|(_, doc, chunks)| {
                        chunks.iter().map(|c| pipeline.embedding_text(&doc.title, c))
                    })
                    .collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let t = Instant::now();
                let v = e.embed_passages(&refs)?;
                embedding_seconds += t.elapsed().as_secs_f64();
                Some(v.into_iter())
            }
            _ => None,
        };
        for (key, doc, chunks) in group {
            let embeddings: Option<Vec<_>> =
                vectors.as_mut().map(|v| v.by_ref().take(chunks.len()).collect());
            store.commit_windows(key, doc, chunks, embeddings.as_deref())?;
        }
        observer.advance(chunks_in_group);
    }
    store.checkpoint()?;
    Ok((
        StoreInfo {
            documents: prepared.len(),
            chunks: total_chunks,
            embedding_model: pipeline.embedder().map(|e| e.model_id().to_string()),
            ingest_seconds: started.elapsed().as_secs_f64(),
            embedding_seconds,
            document_types,
            document_languages,
        },
        ids,
    ))
}

/// The document as stored. With the set's chunks, one section per chunk (under
/// its heading); with DataFactory's chunker, the sections are the set's
/// headed chunks (the document's own structure) or, without headings, the
/// whole text.
fn store_document(d: &crate::EvalDocument, chunker: ChunkerChoice) -> Document {
    let whole =
        || vec![Section { heading_path: Vec::new(), start: 0, end: d.text.chars().count(), page: None }];
    let from_chunks = || {
        d.chunks
            .iter()
            .filter(|c| c.end > c.start)
            .map(|c| Section {
                heading_path: c.heading.iter().cloned().collect(),
                start: c.start,
                end: c.end,
                page: None,
            })
            .collect()
    };
    let sections = match chunker {
        ChunkerChoice::Given => from_chunks(),
        ChunkerChoice::Own if d.chunks.iter().any(|c| c.heading.is_some()) => from_chunks(),
        ChunkerChoice::Own => whole(),
    };
    let mut metadata = serde_json::Map::new();
    metadata.insert("eval_id".into(), d.id.clone().into());
    Document {
        title: d.title.clone(),
        format: Format::Text,
        text: d.text.clone(),
        sections,
        metadata,
        external_id: Some(d.id.clone()),
    }
}

/// One chunk per section, exactly (the set's own chunks).
fn given_chunks(doc: &Document, counter: &dyn TokenCounter) -> Vec<Chunk> {
    doc.sections
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let text = doc.section_text(s).to_string();
            Chunk {
                ordinal: i as u32,
                heading_path: s.heading_path.clone(),
                token_count: counter.count(&text) as u32,
                text,
                start: s.start,
                end: s.end,
                page: s.page,
                context: None,
            }
        })
        .collect()
}

/// Per-query figures of one mode.
#[derive(Default)]
struct QueryScores {
    pass: BTreeMap<usize, Vec<f64>>,
    recall: BTreeMap<usize, Vec<f64>>,
    rr: Vec<f64>,
    ndcg: Vec<f64>,
    latency: Vec<f64>,
}

impl QueryScores {
    fn add(
        &mut self,
        q: &crate::EvalQuery,
        hits: &[SearchHit],
        ids: &HashMap<String, usize>,
        ks: &[usize],
        ms: f64,
    ) {
        let mut golden_documents: Vec<usize> = q.relevant.iter().map(|j| j.document).collect();
        golden_documents.sort_unstable();
        golden_documents.dedup();
        let mut units = Vec::with_capacity(hits.len());
        let mut documents = Vec::with_capacity(hits.len());
        for hit in hits {
            // A collapsed hit stands for every chunk holding its passage.
            let holders = std::iter::once((hit.document_id.as_str(), hit.start, hit.end))
                .chain(hit.duplicates.iter().map(|d| (d.document_id.as_str(), d.start, d.end)));
            let mut found_units = Vec::new();
            let mut found_documents = Vec::new();
            for (document_id, start, end) in holders {
                let Some(&doc) = ids.get(document_id) else { continue };
                found_units.extend(
                    q.relevant
                        .iter()
                        .enumerate()
                        .filter(|(_, j)| {
                            j.document == doc && j.span.is_none_or(|(s, e)| start < e && s < end)
                        })
                        .map(|(u, _)| u),
                );
                found_documents.extend(golden_documents.iter().position(|&g| g == doc));
            }
            found_units.sort_unstable();
            found_units.dedup();
            found_documents.sort_unstable();
            found_documents.dedup();
            units.push(found_units);
            documents.push(found_documents);
        }
        let grades: Vec<f64> = q.relevant.iter().map(|j| j.grade).collect();
        for &k in ks {
            self.pass.entry(k).or_default().push(metrics::pass_at(&units, grades.len(), k));
            self.recall.entry(k).or_default().push(metrics::pass_at(&documents, golden_documents.len(), k));
        }
        self.rr.push(metrics::reciprocal_rank_at(&units, MRR_NDCG_K));
        self.ndcg.push(metrics::ndcg_at(&units, &grades, MRR_NDCG_K));
        self.latency.push(ms);
    }

    fn report(
        self,
        mode: SearchMode,
        fusion: Option<String>,
        retrievers: Vec<&'static str>,
        ks: &[usize],
    ) -> ModeReport {
        let avg = |m: &BTreeMap<usize, Vec<f64>>| -> BTreeMap<usize, f64> {
            ks.iter().map(|k| (*k, metrics::mean(m.get(k).map_or(&[][..], |v| v)))).collect()
        };
        ModeReport {
            mode: mode_name(mode),
            fusion,
            retrievers,
            queries: self.rr.len(),
            pass: avg(&self.pass),
            recall: avg(&self.recall),
            mrr_at_10: metrics::mean(&self.rr),
            ndcg_at_10: metrics::mean(&self.ndcg),
            latency_ms: Latency {
                p50: metrics::percentile(&self.latency, 50.0).unwrap_or(0.0),
                p95: metrics::percentile(&self.latency, 95.0).unwrap_or(0.0),
                mean: metrics::mean(&self.latency),
            },
        }
    }
}

//! How results are shown: for people (plain text) and for programs (JSON).
//! The JSON shapes are documented in docs/GUIDE.md ("JSON output") and kept stable.

use anyhow::Result;
use datafactory_eval::{EvalReport, RelevanceLevel};
use datafactory_ingest::IngestSummary;
use datafactory_store::{DocumentDetail, DocumentSummary, SearchHit, Stats};
use serde::Serialize;
use std::time::Duration;

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(Serialize)]
pub struct SearchOutput<'a> {
    pub query: &'a str,
    pub mode: &'a str,
    /// The retrievers that ran.
    pub retrievers: &'a [&'static str],
    /// What reranking did (null when `rerank.mode` is off).
    pub rerank: Option<&'a datafactory_ingest::RerankReport>,
    /// Why a retriever the mode asks for did not run, or why reranking failed.
    pub notes: &'a [String],
    pub took_ms: f64,
    pub results: &'a [SearchHit],
}

pub fn print_ingest(s: &IngestSummary) {
    let d = &s.documents;
    println!(
        "ingested {} file(s) into '{}' in {:.2}s: {} added, {} replaced, {} unchanged, {} failed; {} chunks ({:.1} documents/s, {:.1} chunks/s)",
        s.files,
        s.collection,
        s.elapsed_seconds,
        d.added,
        d.replaced,
        d.unchanged,
        d.failed,
        s.chunks,
        s.documents_per_second,
        s.chunks_per_second
    );
    match &s.embedding.model {
        Some(m) => println!("embedded {} chunks with {m} in {:.1}s", s.embedding.chunks, s.embedding.seconds),
        None => println!("not embedded: {}", s.embedding.note.as_deref().unwrap_or("no model")),
    }
    let e = &s.enrichment;
    if e.mode == "llm" {
        let evaluated: u64 = e.endpoints.iter().map(|x| x.evaluated_tokens).sum();
        let cached: u64 = e.endpoints.iter().map(|x| x.cached_tokens).sum();
        let why = match e.chunks.unusable {
            0 => "LLM unavailable".to_string(),
            n if n == e.chunks.fallback => "the LLM's answers were no context".to_string(),
            n => format!("LLM unavailable, or {n} answers no context"),
        };
        println!(
            "contexts: {} from the LLM, {} kept from earlier, {} heuristic ({why}), {} windowed; \
             {evaluated} prompt tokens evaluated, {cached} from server caches, in {:.1}s",
            e.chunks.llm, e.chunks.cached, e.chunks.fallback, e.chunks.windowed, e.seconds
        );
        for x in e.endpoints.iter().filter(|x| x.failures > 0 || x.unusable > 0 || !x.up) {
            let unusable = match x.unusable {
                0 => String::new(),
                n => format!(", {n} answers no context (is {} instruction-tuned?)", x.model),
            };
            println!(
                "  {}: {} requests, {} failed{unusable}{}",
                x.url,
                x.requests,
                x.failures,
                if x.up { "" } else { ", down" }
            );
        }
    } else if e.mode == "heuristic" {
        println!("contexts: {} heuristic (no LLM configured)", e.chunks.heuristic);
    }
    if !s.skipped.is_empty() {
        println!("skipped {} file(s) that are not documents", s.skipped.len());
    }
    for w in &s.warnings {
        println!("warning: {}: {}", w.source, w.message);
    }
    for f in &s.failed {
        match &f.location {
            Some(loc) => println!("failed: {} ({loc}): {}", f.source, f.error),
            None => println!("failed: {}: {}", f.source, f.error),
        }
    }
    println!("job {}", s.job_id);
}

fn one_line(text: &str, max_chars: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max_chars {
        return collapsed;
    }
    let cut: String = collapsed.chars().take(max_chars).collect();
    format!("{cut}…")
}

pub fn print_hits(hits: &[SearchHit], took: Duration) {
    if hits.is_empty() {
        println!("no results ({:.1} ms)", took.as_secs_f64() * 1000.0);
        return;
    }
    for (i, h) in hits.iter().enumerate() {
        println!("{:>2}. {:.4}  {}  [{}]", i + 1, h.score, h.title, h.source);
        if !h.heading_path.is_empty() {
            println!("    § {}", h.heading_path.join(" › "));
        }
        if let Some(p) = h.page {
            println!("    page {p}");
        }
        println!("    {}", one_line(&h.text, 300));
        if !h.duplicates.is_empty() {
            let named: Vec<String> =
                h.duplicates.iter().map(|d| format!("{} [{}]", d.title, d.source)).collect();
            let more = (h.duplicate_count as usize).saturating_sub(h.duplicates.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            println!("    also in: {}{more}", named.join("; "));
        }
    }
    println!("{} result(s) in {:.1} ms", hits.len(), took.as_secs_f64() * 1000.0);
}

pub fn print_documents(docs: &[DocumentSummary]) {
    println!("{:<32}  {:<12}  {:>6}  {:<8}  title / source", "id", "collection", "chunks", "format");
    for d in docs {
        println!(
            "{:<32}  {:<12}  {:>6}  {:<8}  {} / {}",
            d.id,
            d.collection,
            d.chunks,
            d.format.as_str(),
            one_line(&d.title, 60),
            d.source
        );
    }
    println!("{} document(s)", docs.len());
}

pub fn print_document(d: &DocumentDetail) {
    let s = &d.summary;
    println!("id          {}", s.id);
    println!("title       {}", s.title);
    println!("collection  {}", s.collection);
    println!("source      {}", s.source);
    if let Some(e) = &s.external_id {
        println!("external id {e}");
    }
    println!("format      {}", s.format.as_str());
    println!("bytes       {}", s.byte_size);
    println!("version     {}", s.version);
    println!("hash        {}", s.content_hash);
    println!("sections    {}", d.sections.len());
    println!("chunks      {}", d.chunks.len());
    for c in &d.chunks {
        let heading = if c.heading_path.is_empty() {
            String::new()
        } else {
            format!(" § {}", c.heading_path.join(" › "))
        };
        println!("  #{:<4} [{}..{}] {} tokens{}", c.ordinal, c.start, c.end, c.token_count, heading);
        println!("        {}", one_line(&c.text, 120));
    }
}

/// The store's counts; `vectors`: the embedding model its vectors were made
/// with (None: built without one, words only).
pub fn print_stats(s: &Stats, vectors: Option<&datafactory_store::VectorOptions>) {
    println!("documents   {}", s.documents);
    println!("chunks      {}", s.chunks);
    match vectors {
        Some(v) => println!("model       {} ({} dimensions)", v.model, v.dimensions),
        None => println!("model       none (words only)"),
    }
    for c in &s.collections {
        println!("  {:<20} {} documents, {} chunks", c.name, c.documents, c.chunks);
    }
    println!(
        "word index  {} chunks, at change {} (store at change {})",
        s.word_index.chunks, s.word_index.applied_change, s.latest_change
    );
    match &s.vector_index {
        Some(v) => println!(
            "vectors     {} of {} ({} dimensions), at change {}; {} chunks embedded",
            v.vectors, v.model, v.dimensions, v.applied_change, s.embedded_chunks
        ),
        None => println!("vectors     none"),
    }
    if s.consistent {
        println!("consistent  yes");
    } else {
        println!("consistent  NO");
        for p in &s.problems {
            println!("  - {p}");
        }
    }
}

/// Exact and near-duplicate passages (`datafactory stats`).
pub fn print_duplicates(d: &datafactory_store::DuplicateReport) {
    println!(
        "duplicates  {} passages in {} chunks; {} held by several chunks ({} extra copies, collapsed at search)",
        d.passages, d.chunks, d.exact_groups, d.exact_copies
    );
    println!(
        "near dups   {} pairs of passages in {} groups ({} passages): word 3-shingles at least {} alike (MinHash)",
        d.near_pairs, d.near_groups, d.near_passages, d.near_threshold
    );
}

/// The nodes sharing a PostgreSQL store and its job queue.
pub fn print_fleet(f: &datafactory_store::Fleet) {
    println!(
        "fleet       {} node(s), {} alive; jobs: {} queued, {} running, {} with an expired lease",
        f.nodes.len(),
        f.nodes.iter().filter(|n| n.alive).count(),
        f.queued,
        f.running,
        f.lease_expired
    );
    for n in &f.nodes {
        println!(
            "  {:<30} {}{}",
            n.id,
            if n.alive { "alive" } else { "not seen lately" },
            n.running_job.as_deref().map(|j| format!(", running {j}")).unwrap_or_default()
        );
    }
}

/// The evaluation report as a table: Pass@k (and, for sets judged by chunk,
/// Recall@k of their documents) in percent, MRR@10 and nDCG@10, latency.
pub fn print_eval(r: &EvalReport) {
    let d = &r.dataset;
    let level = match d.relevance {
        RelevanceLevel::Chunk => "golden chunks",
        RelevanceLevel::Document => "relevant documents",
    };
    println!(
        "{} ({}): {} documents, {} of {} queries; judged by {level}; chunks: {}",
        d.name,
        d.format,
        d.documents,
        d.evaluated_queries,
        d.queries,
        match d.chunker {
            datafactory_eval::ChunkerChoice::Own => "DataFactory's chunker",
            datafactory_eval::ChunkerChoice::Given => "the set's own",
        }
    );
    let s = &r.store;
    match &s.embedding_model {
        Some(m) => println!(
            "store: {} chunks in {:.1} s, embedded with {m} ({:.1} s)",
            s.chunks, s.ingest_seconds, s.embedding_seconds
        ),
        None => println!("store: {} chunks in {:.1} s, words only", s.chunks, s.ingest_seconds),
    }
    let with_recall = d.relevance == RelevanceLevel::Chunk;
    // Hybrid rows name their fusion (`hybrid rrf 0.2/0.8`).
    let name = |m: &datafactory_eval::ModeReport| match &m.fusion {
        Some(f) => format!("{} {f}", m.mode),
        None => m.mode.to_string(),
    };
    let width = r.modes.iter().map(|m| name(m).len()).max().unwrap_or(0).max(8);
    let mut header = format!("{:<width$}", "mode");
    for k in &r.k {
        header.push_str(&format!(" {:>8}", format!("Pass@{k}")));
    }
    if with_recall {
        for k in &r.k {
            header.push_str(&format!(" {:>9}", format!("Recall@{k}")));
        }
    }
    header.push_str(&format!(" {:>7} {:>8} {:>8} {:>8}", "MRR@10", "nDCG@10", "p50 ms", "p95 ms"));
    println!();
    println!("{header}");
    for m in &r.modes {
        let mut line = format!("{:<width$}", name(m));
        for k in &r.k {
            line.push_str(&format!(" {:>8.1}", 100.0 * m.pass.get(k).copied().unwrap_or(0.0)));
        }
        if with_recall {
            for k in &r.k {
                line.push_str(&format!(" {:>9.1}", 100.0 * m.recall.get(k).copied().unwrap_or(0.0)));
            }
        }
        line.push_str(&format!(
            " {:>7.3} {:>8.3} {:>8.1} {:>8.1}",
            m.mrr_at_10, m.ndcg_at_10, m.latency_ms.p50, m.latency_ms.p95
        ));
        println!("{line}");
    }
    if !r.notes.is_empty() {
        println!();
        for n in &r.notes {
            println!("note: {n}");
        }
    }
}

/// One line per document: type, language, tokens, structure, plan, and the
/// signals that decided.
pub fn print_analyses(results: &[(String, datafactory_analyze::Analysis)]) {
    for (source, a) in results {
        let language = a.language.as_ref().map_or("-".to_string(), |l| l.code.clone());
        let s = &a.structure;
        println!(
            "{source}\n  {} ({}, confidence {:.2}), {language}, {} tokens, {} headings (depth {}), {} pages, {} tables, {} code blocks, {} lists, {:.0} words/paragraph",
            a.doc_type.as_str(),
            match a.route {
                datafactory_analyze::Route::Heuristic => "heuristic",
                datafactory_analyze::Route::Llm => "llm",
            },
            a.confidence,
            a.estimated_tokens,
            s.headings,
            s.max_heading_depth,
            s.pages,
            s.tables,
            s.code_blocks,
            s.lists,
            s.average_paragraph_words,
        );
        println!("  plan: {}", a.plan.describe());
        println!("  why: {}", a.reason);
        if let Some(f) = &a.fallback {
            println!("  fallback: {f}");
        }
    }
}

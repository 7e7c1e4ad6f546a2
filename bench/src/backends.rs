//! `backends DOCS CHUNKS DIM QUERIES POSTGRES_URL`: the same synthetic corpus
//! (DOCS documents of CHUNKS chunks, DIM-dimension vectors grouped by topic,
//! words from a skewed vocabulary) committed to the embedded store and to
//! PostgreSQL, one document per commit; then QUERIES hybrid (words + dense),
//! lexical and dense searches on each. Prints one JSON object per backend
//! (ingest rate, search latencies) and one comparing their results.

use anyhow::{Context, Result};
use datafactory_core::config::StoreConfig;
use datafactory_core::{Chunk, Document, Embedding};
use datafactory_store::{DocumentKey, SearchMode, SearchRequest, Store, VectorOptions};
use std::time::Instant;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn word(i: u64) -> String {
    let mut s = String::from("w");
    let mut n = i;
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            break s;
        }
    }
}

/// A skewed draw from a 5,000-word vocabulary (small ids are common).
fn draw(rng: &mut Rng) -> u64 {
    let u = rng.unit();
    (5000.0 * u * u * u) as u64
}

fn normalise(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn noise(rng: &mut Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.unit() - 0.5).collect()
}

type Corpus = Vec<(DocumentKey, Document, Vec<Chunk>, Vec<Embedding>)>;

fn corpus(docs: usize, chunks: usize, dim: usize) -> Corpus {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let topics: Vec<Vec<f32>> = (0..50).map(|_| noise(&mut rng, dim)).collect();
    (0..docs)
        .map(|d| {
            let topic = &topics[d % topics.len()];
            let mut text = String::new();
            let mut parts = Vec::with_capacity(chunks);
            let mut embeddings = Vec::with_capacity(chunks);
            for i in 0..chunks {
                let body: Vec<String> = (0..60).map(|_| word(draw(&mut rng))).collect();
                let body = format!("{}. ", body.join(" "));
                let start = text.chars().count();
                text.push_str(&body);
                parts.push(Chunk {
                    ordinal: i as u32,
                    heading_path: vec![format!("Part {}", i / 10)],
                    text: body.clone(),
                    start,
                    end: start + body.chars().count(),
                    page: None,
                    token_count: 60,
                    context: None,
                });
                let n = noise(&mut rng, dim);
                embeddings.push(Embedding {
                    dense: normalise(topic.iter().zip(n).map(|(t, e)| t + 0.6 * e).collect()),
                    sparse: vec![],
                });
            }
            let source = format!("doc-{d}.txt");
            let key = DocumentKey {
                id: datafactory_core::document_id("bench", &source),
                collection: "bench".into(),
                source: source.clone(),
                content_hash: datafactory_core::content_hash(text.as_bytes()),
                pipeline: "bench".into(),
                byte_size: text.len() as u64,
            };
            let doc = Document::plain(source, text);
            (key, doc, parts, embeddings)
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn backends(args: &[String]) -> Result<()> {
    let usage = "backends DOCS CHUNKS DIM QUERIES POSTGRES_URL";
    let docs: usize = args.first().context(usage)?.parse()?;
    let chunks: usize = args.get(1).context(usage)?.parse()?;
    let dim: usize = args.get(2).context(usage)?.parse()?;
    let queries: usize = args.get(3).context(usage)?.parse()?;
    let url = args.get(4).context(usage)?;
    let corpus = corpus(docs, chunks, dim);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let qs: Vec<(String, Embedding)> = (0..queries)
        .map(|_| {
            let (_, _, parts, embeddings) = &corpus[(rng.next() % docs as u64) as usize];
            let c = (rng.next() % chunks as u64) as usize;
            let words: Vec<&str> = parts[c].text.split_whitespace().take(4).collect();
            let n = noise(&mut rng, dim);
            let dense = normalise(embeddings[c].dense.iter().zip(n).map(|(a, e)| a + 0.3 * e).collect());
            (words.join(" ").trim_end_matches('.').to_string(), Embedding { dense, sparse: vec![] })
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let mut schema = StoreConfig {
        backend: "postgres".into(),
        url: url.clone(),
        schema: format!("bench_{}", std::process::id()),
        ..StoreConfig::default()
    };
    schema.pool_size = 4;
    let stores =
        [("embedded", Store::open(&dir.path().join("data"))?), ("postgres", Store::open_postgres(&schema)?)];
    let options = VectorOptions {
        model: "bench".into(),
        dimensions: dim,
        quantization: "f16".into(),
        connectivity: 16,
        expansion_add: 128,
        expansion_search: 64,
        exact_below: 20_000,
    };
    let settings = datafactory_core::config::SearchConfig::default();
    let mut results: Vec<Vec<(Vec<String>, Vec<String>)>> = Vec::new();
    for (name, store) in &stores {
        store.enable_vectors(&options)?;
        let start = Instant::now();
        for (key, doc, parts, embeddings) in &corpus {
            store.commit_document(key, doc, parts, Some(embeddings))?;
        }
        store.checkpoint()?;
        let ingest = start.elapsed().as_secs_f64();
        let mut lat: [Vec<f64>; 3] = Default::default();
        let mut mine = Vec::new();
        for (text, e) in &qs {
            let mut ids = Vec::new();
            for (m, mode) in [SearchMode::Hybrid, SearchMode::Lexical, SearchMode::Dense].iter().enumerate() {
                let req =
                    SearchRequest { embedding: Some(e), ..SearchRequest::new(text, *mode, 10, &settings) };
                let t = Instant::now();
                let hits = store.search(&req)?.hits;
                lat[m].push(t.elapsed().as_secs_f64() * 1000.0);
                if m != 1 {
                    ids.push(hits.into_iter().map(|h| h.chunk_id).collect::<Vec<_>>());
                }
            }
            mine.push((ids[0].clone(), ids[1].clone()));
        }
        results.push(mine);
        for l in &mut lat {
            l.sort_by(f64::total_cmp);
        }
        println!(
            "{}",
            serde_json::json!({
                "backend": name, "documents": docs, "chunks": docs * chunks, "dim": dim,
                "ingest_s": ingest, "documents_per_s": docs as f64 / ingest,
                "chunks_per_s": (docs * chunks) as f64 / ingest,
                "hybrid_ms_p50": percentile(&lat[0], 0.5), "hybrid_ms_p99": percentile(&lat[0], 0.99),
                "lexical_ms_p50": percentile(&lat[1], 0.5), "lexical_ms_p99": percentile(&lat[1], 0.99),
                "dense_ms_p50": percentile(&lat[2], 0.5), "dense_ms_p99": percentile(&lat[2], 0.99),
            })
        );
    }
    // How alike the results are: the share of dense top-10 lists that are
    // identical, and the mean overlap of the hybrid top-10.
    let (a, b) = (&results[0], &results[1]);
    let same_dense = a.iter().zip(b).filter(|(x, y)| x.1 == y.1).count() as f64 / a.len() as f64;
    let overlap = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.0.iter().filter(|id| y.0.contains(id)).count() as f64 / x.0.len().max(1) as f64)
        .sum::<f64>()
        / a.len() as f64;
    println!("{}", serde_json::json!({"dense_top10_identical": same_dense, "hybrid_top10_overlap": overlap}));
    Ok(())
}

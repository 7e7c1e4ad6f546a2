use super::*;
use datafactory_core::document::slice_chars;
use datafactory_core::{Format, HeuristicTokenCounter, Section};
use proptest::prelude::*;

fn chunker(max_tokens: usize, overlap_tokens: usize) -> Chunker {
    Chunker::new(&ChunkingConfig { max_tokens, overlap_tokens }, Arc::new(HeuristicTokenCounter))
}

/// A document with one section per `(heading, body)`, laid out like Markdown.
fn doc(parts: &[(&str, &str)]) -> Document {
    let mut text = String::new();
    let mut sections = Vec::new();
    for (heading, body) in parts {
        if !heading.is_empty() {
            text.push_str("# ");
            text.push_str(heading);
            text.push_str("\n\n");
        }
        let start = text.chars().count();
        text.push_str(body);
        let end = text.chars().count();
        text.push_str("\n\n");
        sections.push(Section {
            heading_path: if heading.is_empty() { vec![] } else { vec![heading.to_string()] },
            start,
            end,
            page: None,
        });
    }
    Document {
        title: "t".into(),
        format: Format::Markdown,
        text,
        sections,
        metadata: Default::default(),
        external_id: None,
    }
}

#[test]
fn small_sections_stay_whole_and_apart() {
    let d = doc(&[("One", "Alpha beta."), ("Two", "Gamma delta.")]);
    let chunks = chunker(512, 0).chunk(&d);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].text, "Alpha beta.");
    assert_eq!(chunks[0].heading_path, vec!["One"]);
    assert_eq!(chunks[1].text, "Gamma delta.");
    assert_eq!(chunks[1].ordinal, 1);
    assert_eq!(slice_chars(&d.text, chunks[1].start, chunks[1].end), "Gamma delta.");
}

#[test]
fn prefers_paragraph_then_sentence_boundaries() {
    // Two paragraphs of ~12 tokens each with a budget of 20: the cut falls
    // between the paragraphs, not inside the first one's sentences.
    let p1 = "One two three four. Five six seven eight. Nine ten eleven twelve.";
    let p2 = "Uno dos tres cuatro. Cinco seis siete ocho. Nueve diez once doce.";
    let body = format!("{p1}\n\n{p2}");
    let d = doc(&[("", &body)]);
    let chunks = chunker(20, 0).chunk(&d);
    assert_eq!(chunks.len(), 2, "{chunks:#?}");
    assert_eq!(chunks[0].text, p1);
    assert_eq!(chunks[1].text, p2);
    // One long paragraph: cuts fall after sentences.
    let long = format!("{p1} {p2}");
    let d = doc(&[("", &long)]);
    for c in chunker(20, 0).chunk(&d) {
        assert!(c.text.ends_with('.'), "{:?}", c.text);
    }
}

#[test]
fn oversized_words_are_cut_to_fit() {
    let word = "x".repeat(1000); // 250 heuristic tokens
    let d = doc(&[("", &word)]);
    let chunks = chunker(16, 0).chunk(&d);
    assert!(chunks.len() >= 16);
    assert!(chunks.iter().all(|c| c.token_count <= 16));
    let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(joined, word);
}

#[test]
fn overlap_repeats_the_previous_sentences() {
    let body = (0..40).map(|i| format!("Sentence number {i} is here.")).collect::<Vec<_>>().join(" ");
    let d = doc(&[("", &body)]);
    let plain = chunker(32, 0).chunk(&d);
    let overlapped = chunker(32, 8).chunk(&d);
    assert!(overlapped.len() > plain.len());
    for pair in overlapped.windows(2) {
        assert!(pair[1].start < pair[0].end, "chunks should overlap: {pair:#?}");
        assert!(pair[1].start > pair[0].start);
    }
}

#[test]
fn fingerprint_names_the_settings() {
    let f = chunker(300, 20).fingerprint();
    assert!(f.contains("max_tokens=300") && f.contains("overlap_tokens=20"), "{f}");
    assert_ne!(f, chunker(301, 20).fingerprint());
}

fn plan(strategy: ChunkStrategy, max_tokens: usize, keep: bool) -> ChunkPlan {
    ChunkPlan { strategy, max_tokens, overlap_tokens: 0, keep_tables_whole: keep, keep_code_whole: keep }
}

#[test]
fn a_plan_keeps_code_blocks_and_tables_whole_when_they_fit() {
    let prose = "Some words here. ".repeat(6);
    let code = "```rust\nfn main() {\n    let x = 1;\n\n    println!(\"{x}\");\n}\n```";
    let table = "| name | value |\n|---|---|\n| a | 1 |\n| b | 2 |";
    let body = format!("{prose}\n{code}\n{prose}\n\n{table}\n\n{prose}");
    let d = doc(&[("", &body)]);
    let base = chunker(40, 0);
    let whole = base.with_plan(&plan(ChunkStrategy::Sections, 40, true), 512).chunk(&d);
    assert!(whole.iter().any(|c| c.text.contains(code)), "{whole:#?}");
    assert!(whole.iter().any(|c| c.text.contains(table)), "{whole:#?}");
    // A block over the budget is cut like any text, never over budget.
    let small = base.with_plan(&plan(ChunkStrategy::Sections, 16, true), 512).chunk(&d);
    assert!(small.iter().all(|c| c.token_count <= 16));
}

#[test]
fn the_lines_strategy_cuts_at_lines_and_blank_lines() {
    let body = "a = 1\nb = 2\n\nc = 3\nd = 4\n\ne = 5\nf = 6";
    let d = doc(&[("", body)]);
    let c = chunker(512, 0).with_plan(&plan(ChunkStrategy::Lines, 8, false), 512);
    let chunks = c.chunk(&d);
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, vec!["a = 1\nb = 2", "c = 3\nd = 4", "e = 5\nf = 6"]);
    assert!(c.fingerprint().contains("strategy=lines"));
    // The plan's size is capped by what the model takes.
    assert_eq!(chunker(512, 0).with_plan(&plan(ChunkStrategy::Sections, 900, false), 300).max_tokens(), 300);
}

fn arbitrary_body() -> impl Strategy<Value = String> {
    // Words, punctuation, unicode, newlines and blank lines in any mix.
    let token = prop_oneof![
        "[a-z]{1,12}",
        "[A-Z][a-z]{0,8}",
        Just(". ".to_string()),
        Just("? ".to_string()),
        Just(", ".to_string()),
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("  ".to_string()),
        "[α-ω]{1,6}",
        "[一-龥]{1,4}",
        "[0-9]{1,30}",
        "[a-z]{40,200}",
        Just("\n```\n".to_string()),
        Just(" | ".to_string()),
        Just("{\n".to_string()),
        Just(";\n".to_string()),
    ];
    prop::collection::vec(token, 0..300).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn chunks_map_back_fit_the_budget_and_cover_the_text(
        bodies in prop::collection::vec(arbitrary_body(), 1..4),
        max in 16usize..200,
        overlap_share in 0usize..50,
        planned in 0usize..3,
    ) {
        let overlap = max * overlap_share / 100;
        let parts: Vec<(String, String)> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("H{i}"), b.clone()))
            .collect();
        let refs: Vec<(&str, &str)> = parts.iter().map(|(h, b)| (h.as_str(), b.as_str())).collect();
        let d = doc(&refs);
        let c = match planned {
            0 => chunker(max, overlap),
            n => chunker(512, 0).with_plan(&ChunkPlan {
                strategy: if n == 1 { ChunkStrategy::Sections } else { ChunkStrategy::Lines },
                max_tokens: max,
                overlap_tokens: overlap,
                keep_tables_whole: true,
                keep_code_whole: true,
            }, 8192),
        };
        let chunks = c.chunk(&d);
        let counter = HeuristicTokenCounter;
        for (i, ch) in chunks.iter().enumerate() {
            prop_assert_eq!(ch.ordinal as usize, i);
            prop_assert_eq!(slice_chars(&d.text, ch.start, ch.end), ch.text.as_str());
            prop_assert!(counter.count(&ch.text) <= max, "chunk over budget: {:?}", ch.text);
            prop_assert!(!ch.text.trim().is_empty());
            // Within exactly one section.
            let inside = d.sections.iter().filter(|s| s.start <= ch.start && ch.end <= s.end).count();
            prop_assert_eq!(inside, 1);
        }
        // Nothing is lost: every non-blank character of a section is in a chunk.
        for s in &d.sections {
            let mut covered = vec![false; s.end - s.start];
            for ch in chunks.iter().filter(|ch| s.start <= ch.start && ch.end <= s.end) {
                for k in ch.start..ch.end { covered[k - s.start] = true; }
            }
            for (k, ch) in d.section_text(s).chars().enumerate() {
                prop_assert!(covered[k] || ch.is_whitespace(), "lost {:?} at {}", ch, s.start + k);
            }
        }
        // Deterministic.
        prop_assert_eq!(chunks, c.chunk(&d));
    }
}

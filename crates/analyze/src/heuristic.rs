//! The heuristic route: structure figures and word statistics, a score per
//! document type, the highest score wins (ties go to the earlier type in
//! [`DocType::ALL`]), and a plan per type. Linear in the text; deterministic.

use crate::{Analysis, DocType, Language, Route, Signal, Structure, HEURISTICS_VERSION};
use datafactory_core::plan::{blocks, is_table_row, looks_like_code, BlockKind};
use datafactory_core::{ChunkPlan, ChunkStrategy, Document, HeuristicTokenCounter, TokenCounter};

/// Characters of prose given to the language detector (its answer settles
/// long before; the cap keeps big documents cheap).
const LANGUAGE_SAMPLE_CHARS: usize = 20_000;

/// Analyses a document by heuristics.
pub fn analyze(doc: &Document) -> Analysis {
    let structure = structure_of(doc);
    let stats = Stats::of(doc, &structure);
    let scores = scores(&structure, &stats);
    let (doc_type, best) =
        scores.iter().fold(
            (DocType::Prose, f64::MIN),
            |acc, (t, s)| if s.total() > acc.1 { (*t, s.total()) } else { acc },
        );
    let runner_up = scores.iter().filter(|(t, _)| *t != doc_type).map(|(_, s)| s.total()).fold(0.0, f64::max);
    let confidence = if best <= 0.0 { 0.0 } else { ((best - runner_up) / best).clamp(0.0, 1.0) };
    let mut signals: Vec<Signal> =
        scores.iter().find(|(t, _)| *t == doc_type).map(|(_, s)| s.signals.clone()).unwrap_or_default();
    signals.sort_by(|a, b| b.weight.total_cmp(&a.weight).then_with(|| a.name.cmp(&b.name)));
    signals.retain(|s| s.weight > 0.0);
    let plan = plan_for(doc_type, &structure);
    let decided =
        signals.iter().take(3).map(|s| format!("{} = {}", s.name, round(s.value))).collect::<Vec<_>>();
    let reason = format!(
        "{} (score {:.2}, next {:.2}){}; plan: {}",
        doc_type.as_str(),
        best,
        runner_up,
        if decided.is_empty() { " by default".to_string() } else { format!(" from {}", decided.join(", ")) },
        plan_reason(doc_type)
    );
    Analysis {
        route: Route::Heuristic,
        analyzer: HEURISTICS_VERSION.to_string(),
        format: doc.format,
        language: language_of(doc),
        doc_type,
        confidence: round(confidence),
        structure,
        estimated_tokens: HeuristicTokenCounter.count(&doc.text),
        plan,
        signals,
        reason,
        fallback: None,
    }
}

/// The chunking plan for a type. Sizes are in tokens; the ingest pipeline
/// caps them at what the embedding model takes.
pub fn plan_for(doc_type: DocType, structure: &Structure) -> ChunkPlan {
    let plan = |strategy, max_tokens, overlap_tokens, tables, code| ChunkPlan {
        strategy,
        max_tokens,
        overlap_tokens,
        keep_tables_whole: tables,
        keep_code_whole: code,
    };
    use ChunkStrategy::{Lines, Sections};
    match doc_type {
        // Running text: mid-sized chunks, a little overlap so an idea cut in
        // two is still found whole in one of them.
        DocType::Prose => {
            let long_paragraphs = structure.average_paragraph_words > 120.0;
            plan(Sections, if long_paragraphs { 512 } else { 384 }, 32, true, true)
        }
        // Sections are already small units; keep examples and tables intact.
        DocType::Manual => plan(Sections, 384, 0, true, true),
        // Cut between definitions (blank lines), never inside a line.
        DocType::SourceCode => plan(Lines, 384, 0, true, true),
        // Clauses refer to each other: larger chunks, more overlap.
        DocType::Legal => plan(Sections, 512, 64, true, false),
        DocType::Academic => plan(Sections, 512, 48, true, true),
        // One slide is one idea: small chunks that do not cross pages.
        DocType::Slides => plan(Sections, 256, 0, true, true),
        // Rows are records: cut between lines, keep tables whole when they fit.
        DocType::Data => plan(Lines, 384, 0, true, false),
        // Messages: cut between lines, a little overlap for the thread.
        DocType::Conversation => plan(Lines, 256, 32, false, true),
    }
}

fn plan_reason(doc_type: DocType) -> &'static str {
    match doc_type {
        DocType::Prose => "paragraphs and sentences, some overlap",
        DocType::Manual => "by section, examples and tables whole",
        DocType::SourceCode => "by lines, cut at blank lines",
        DocType::Legal => "large chunks with overlap, clauses refer to each other",
        DocType::Academic => "large chunks with overlap, tables whole",
        DocType::Slides => "small chunks, one slide at a time",
        DocType::Data => "by lines (records), tables whole",
        DocType::Conversation => "by lines (messages), some overlap",
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Structure figures of a document.
pub fn structure_of(doc: &Document) -> Structure {
    let text = doc.text.as_str();
    let mut s = Structure {
        characters: text.chars().count(),
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
        sections: doc.sections.len(),
        pages: doc.sections.iter().filter_map(|s| s.page).max().unwrap_or(0) as usize,
        ..Default::default()
    };
    // Headings: each new heading path introduces the headings it adds.
    let mut previous: &[String] = &[];
    for section in &doc.sections {
        let path = section.heading_path.as_slice();
        let common = path.iter().zip(previous).take_while(|(a, b)| a == b).count();
        for depth in common..path.len() {
            if s.headings_by_depth.len() <= depth {
                s.headings_by_depth.resize(depth + 1, 0);
            }
            s.headings_by_depth[depth] += 1;
            s.headings += 1;
        }
        previous = path;
    }
    s.max_heading_depth = s.headings_by_depth.len();
    let found = blocks(text);
    let mut code_bytes = 0;
    for b in &found {
        match b.kind {
            BlockKind::Code => {
                s.code_blocks += 1;
                code_bytes += b.end - b.start;
            }
            BlockKind::Table => {
                s.tables += 1;
                s.table_rows += text[b.start..b.end].lines().filter(|l| is_table_row(l)).count();
            }
        }
    }
    // Lines outside blocks: lists, paragraphs, lone code lines.
    let mut pos = 0;
    let mut next_block = 0;
    let mut in_list = false;
    let mut paragraph_words = 0usize;
    let mut in_paragraph = false;
    for line in text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        while next_block < found.len() && found[next_block].end <= start {
            next_block += 1;
        }
        let inside = next_block < found.len() && found[next_block].start <= start;
        if inside {
            in_list = false;
            in_paragraph = false;
            continue;
        }
        let t = line.trim();
        if t.is_empty() {
            in_list = false;
            in_paragraph = false;
            continue;
        }
        if is_list_item(t) {
            s.list_items += 1;
            if !in_list {
                s.lists += 1;
                in_list = true;
            }
            in_paragraph = false;
            continue;
        }
        in_list = false;
        if looks_like_code(t) {
            code_bytes += line.len();
            continue;
        }
        if is_heading_line(t) {
            in_paragraph = false;
            continue;
        }
        if !in_paragraph {
            s.paragraphs += 1;
            in_paragraph = true;
        }
        let words = t.split_whitespace().count();
        paragraph_words += words;
    }
    s.average_paragraph_words =
        if s.paragraphs == 0 { 0.0 } else { round(paragraph_words as f64 / s.paragraphs as f64) };
    s.code_share = if text.is_empty() { 0.0 } else { round(code_bytes as f64 / text.len() as f64) };
    s
}

fn is_list_item(t: &str) -> bool {
    if t.starts_with("- ") || t.starts_with("* ") || t.starts_with("+ ") || t.starts_with("• ") {
        return true;
    }
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && digits <= 3 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") "))
}

fn is_heading_line(t: &str) -> bool {
    t.starts_with('#') && t.trim_start_matches('#').starts_with(' ')
}

/// Word statistics the scores read.
struct Stats {
    words: usize,
    legal_per_1000: f64,
    /// Different legal terms seen: one word used often ("shall") is not a contract.
    legal_distinct: usize,
    academic_per_1000: f64,
    manual_per_1000: f64,
    citations_per_1000: f64,
    has_abstract: bool,
    has_references: bool,
    header_lines: usize,
    chat_share: f64,
    delimited_share: f64,
    numeric_share: f64,
    short_line_share: f64,
    words_per_page: f64,
    /// The title names a kind of document ("manual", "agreement", …).
    title_kind: Option<DocType>,
    /// The whole text is one JSON value.
    json: bool,
}

const TITLE_WORDS: &[(&str, DocType)] = &[
    ("manual", DocType::Manual),
    ("guide", DocType::Manual),
    ("handbook", DocType::Manual),
    ("documentation", DocType::Manual),
    ("tutorial", DocType::Manual),
    ("reference", DocType::Manual),
    ("agreement", DocType::Legal),
    ("contract", DocType::Legal),
    ("license", DocType::Legal),
    ("licence", DocType::Legal),
    ("terms", DocType::Legal),
    ("policy", DocType::Legal),
];

const LEGAL_TERMS: &[&str] = &[
    "hereby",
    "herein",
    "hereof",
    "hereto",
    "hereunder",
    "thereof",
    "whereas",
    "shall",
    "pursuant",
    "indemnify",
    "indemnification",
    "liability",
    "liable",
    "licensee",
    "licensor",
    "party",
    "parties",
    "agreement",
    "warranty",
    "warranties",
    "covenant",
    "jurisdiction",
    "termination",
    "breach",
    "notwithstanding",
    "obligations",
    "clause",
    "statute",
    "plaintiff",
    "defendant",
    "tenant",
    "landlord",
];
const ACADEMIC_TERMS: &[&str] = &[
    "abstract",
    "et",
    "al",
    "hypothesis",
    "methodology",
    "empirical",
    "theorem",
    "lemma",
    "proof",
    "corollary",
    "experiment",
    "experiments",
    "results",
    "conclusion",
    "conclusions",
    "literature",
    "doi",
    "arxiv",
    "proceedings",
    "journal",
    "baseline",
    "dataset",
    "evaluation",
    "propose",
    "proposed",
    "significant",
    "analysis",
    "coefficient",
    "equation",
    "figure",
    "fig",
];
const MANUAL_TERMS: &[&str] = &[
    "install",
    "installation",
    "configure",
    "configuration",
    "click",
    "select",
    "run",
    "example",
    "examples",
    "usage",
    "option",
    "options",
    "command",
    "step",
    "steps",
    "note",
    "warning",
    "tip",
    "default",
    "parameter",
    "parameters",
    "returns",
    "function",
    "method",
    "api",
    "you",
    "your",
    "enable",
    "setting",
    "settings",
    "type",
    "create",
    "use",
    "using",
];
const HEADER_PREFIXES: &[&str] =
    &["from:", "to:", "subject:", "date:", "sent:", "cc:", "bcc:", "reply-to:", "message-id:"];

impl Stats {
    fn of(doc: &Document, structure: &Structure) -> Stats {
        let text = doc.text.as_str();
        let (mut words, mut legal, mut academic, mut manual, mut numeric) = (0usize, 0, 0, 0, 0);
        let mut legal_seen = 0u64;
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            words += 1;
            if word.chars().all(|c| c.is_ascii_digit()) {
                numeric += 1;
                continue;
            }
            let lower = word.to_lowercase();
            let w = lower.as_str();
            if let Some(i) = LEGAL_TERMS.iter().position(|t| *t == w) {
                legal += 1;
                legal_seen |= 1u64 << i;
            }
            academic += ACADEMIC_TERMS.contains(&w) as usize;
            manual += MANUAL_TERMS.contains(&w) as usize;
        }
        let (mut lines, mut headers, mut chat, mut delimited, mut short) = (0usize, 0, 0, 0, 0);
        let mut citations = 0usize;
        let (mut speakers, mut speaker_lines) = (Vec::<&str>::new(), 0usize);
        let (mut has_abstract, mut has_references) = (false, false);
        for line in text.lines() {
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            lines += 1;
            let lower = t.to_lowercase();
            if HEADER_PREFIXES.iter().any(|p| lower.starts_with(p)) {
                headers += 1;
            }
            match chat_speaker(t) {
                Some(None) => chat += 1,
                // Speakers come back: a run of different "Name:" lines is a glossary.
                Some(Some(name)) => {
                    speaker_lines += 1;
                    if !speakers.contains(&name) && speakers.len() < 64 {
                        speakers.push(name);
                    }
                }
                None => {}
            }
            if t.matches('\t').count() >= 2 || (t.matches(',').count() >= 3 && !t.contains(". ")) {
                delimited += 1;
            }
            if t.split_whitespace().count() <= 8 {
                short += 1;
            }
            let bare = lower.trim_start_matches(['#', ' ', '1', '.', '0', 'i', 'v']);
            has_abstract |=
                bare == "abstract" || lower.starts_with("abstract:") || lower.starts_with("abstract.");
            has_references |= matches!(bare, "references" | "bibliography" | "works cited");
            citations += count_citations(t);
        }
        if speaker_lines >= 4 && speakers.len() * 2 <= speaker_lines {
            chat += speaker_lines;
        }
        let share = |n: usize| if lines == 0 { 0.0 } else { n as f64 / lines as f64 };
        let per_1000 = |n: usize| if words == 0 { 0.0 } else { n as f64 * 1000.0 / words as f64 };
        Stats {
            words,
            legal_per_1000: per_1000(legal),
            legal_distinct: legal_seen.count_ones() as usize,
            academic_per_1000: per_1000(academic),
            manual_per_1000: per_1000(manual),
            citations_per_1000: per_1000(citations),
            has_abstract,
            has_references,
            header_lines: headers,
            chat_share: share(chat),
            delimited_share: share(delimited),
            numeric_share: if words == 0 { 0.0 } else { numeric as f64 / words as f64 },
            short_line_share: share(short),
            title_kind: doc
                .title
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .find_map(|w| TITLE_WORDS.iter().find(|(t, _)| *t == w).map(|(_, k)| *k)),
            json: {
                let t = text.trim();
                ((t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']')))
                    && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
            },
            words_per_page: if structure.pages == 0 {
                f64::INFINITY
            } else {
                structure.words as f64 / structure.pages as f64
            },
        }
    }
}

/// `[12]`, `[3, 4]`, `(Smith et al., 2020)`, `(Smith, 2020)`.
fn count_citations(line: &str) -> usize {
    let bytes = line.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'[' {
            let rest = &line[i + 1..];
            if let Some(end) = rest.find(']') {
                let inner = &rest[..end];
                if !inner.is_empty()
                    && inner.len() <= 12
                    && inner.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c == '-')
                    && inner.chars().any(|c| c.is_ascii_digit())
                {
                    n += 1;
                }
            }
        }
        i += 1;
    }
    n + line.matches(" et al.").count()
}

/// A chat line: `[10:32] Ann: hi`, `10:32 Ann: hi`, `<ann> hi` (Some(None)),
/// or `Ann: message` (Some(Some("Ann")), a chat line if speakers come back).
fn chat_speaker(t: &str) -> Option<Option<&str>> {
    let time = |s: &str| {
        let b = s.as_bytes();
        b.len() >= 5
            && b[0].is_ascii_digit()
            && b[1].is_ascii_digit()
            && b[2] == b':'
            && b[3].is_ascii_digit()
    };
    if time(t) || (t.starts_with('[') && time(&t[1..])) {
        return Some(None);
    }
    if t.starts_with('<') && t.find('>').is_some_and(|e| e > 1 && e < 24 && !t[1..e].contains(' ')) {
        return Some(None);
    }
    // A short speaker name, a colon, a message.
    match t.find(": ") {
        Some(e) if e > 0 && e <= 20 => {
            let name = &t[..e];
            let speaker = name.chars().next().is_some_and(char::is_uppercase)
                && name.split_whitespace().count() <= 2
                && name.chars().all(|c| c.is_alphanumeric() || c == ' ' || c == '.' || c == '_')
                && !HEADER_PREFIXES.iter().any(|p| t.to_lowercase().starts_with(p));
            speaker.then_some(Some(name))
        }
        _ => None,
    }
}

/// A type's score and the signals behind it.
#[derive(Default)]
struct Score {
    signals: Vec<Signal>,
}

impl Score {
    fn add(&mut self, name: &str, value: f64, weight: f64) {
        self.signals.push(Signal { name: name.to_string(), value: round(value), weight: round(weight) });
    }
    fn total(&self) -> f64 {
        self.signals.iter().map(|s| s.weight).sum()
    }
}

fn scores(s: &Structure, st: &Stats) -> Vec<(DocType, Score)> {
    let nonblank_lines = (s.lines as f64).max(1.0);
    let table_share = s.table_rows as f64 / nonblank_lines;
    let list_share = s.list_items as f64 / nonblank_lines;
    let mut out = Vec::new();

    // Prose: the default; long paragraphs of words.
    let mut prose = Score::default();
    prose.add("baseline", 1.0, 0.3);
    if s.average_paragraph_words >= 30.0 {
        let weight = 0.3 * (1.0 - st.numeric_share * 2.0).max(0.0);
        prose.add("average_paragraph_words", s.average_paragraph_words, weight);
    }
    if s.code_share < 0.05 && table_share < 0.1 {
        prose.add("code_share", s.code_share, 0.1);
    }
    out.push((DocType::Prose, prose));

    // Manual: instructions, headings in depth, examples.
    let mut manual = Score::default();
    manual.add("instruction_terms_per_1000_words", st.manual_per_1000, (st.manual_per_1000 / 60.0).min(0.35));
    if s.headings >= 3 {
        manual.add("headings", s.headings as f64, 0.15);
    }
    if s.max_heading_depth >= 2 {
        manual.add("max_heading_depth", s.max_heading_depth as f64, 0.1);
    }
    // Examples between explanations; code without headings is just code.
    if s.code_share > 0.02 && s.code_share < 0.6 && s.headings > 0 {
        manual.add("code_share", s.code_share, (s.code_share * 2.0).min(0.3));
    }
    if list_share > 0.05 {
        manual.add("list_item_share", list_share, (list_share).min(0.2));
    }
    out.push((DocType::Manual, manual));

    // Source code: most of the text reads as code.
    let mut code = Score::default();
    code.add("code_share", s.code_share, if s.code_share >= 0.5 { s.code_share * 1.6 } else { s.code_share });
    if s.code_share >= 0.3 && s.headings == 0 {
        code.add("no_headings", 1.0, 0.3);
    }
    if st.json {
        // JSON is data, however much of it reads like code.
        code.signals.iter_mut().for_each(|sig| sig.weight = 0.0);
    }
    out.push((DocType::SourceCode, code));

    // Legal: the vocabulary of contracts and statutes.
    let mut legal = Score::default();
    let spread = (st.legal_distinct as f64 / 5.0).min(1.0);
    legal.add("legal_terms_per_1000_words", st.legal_per_1000, (st.legal_per_1000 / 25.0).min(1.2) * spread);
    legal.add("distinct_legal_terms", st.legal_distinct as f64, 0.0);
    out.push((DocType::Legal, legal));

    // Academic: abstract, references, citations, the vocabulary of papers.
    let mut academic = Score::default();
    academic.add(
        "academic_terms_per_1000_words",
        st.academic_per_1000,
        (st.academic_per_1000 / 40.0).min(0.6),
    );
    if st.has_abstract {
        academic.add("has_abstract", 1.0, 0.3);
    }
    if st.has_references {
        academic.add("has_references", 1.0, 0.3);
    }
    academic.add("citations_per_1000_words", st.citations_per_1000, (st.citations_per_1000 / 5.0).min(0.4));
    out.push((DocType::Academic, academic));

    // Slides: many pages with few words each, short lines.
    let mut slides = Score::default();
    if s.pages >= 3 && st.words_per_page < 80.0 {
        slides.add("words_per_page", st.words_per_page, 0.6);
        slides.add("short_line_share", st.short_line_share, st.short_line_share * 0.5);
    }
    out.push((DocType::Slides, slides));

    // Data: tables, delimited lines, numbers.
    let mut data = Score::default();
    data.add("table_row_share", table_share, (table_share * 1.4).min(1.2));
    data.add("delimited_line_share", st.delimited_share, (st.delimited_share * 1.4).min(1.2));
    if st.numeric_share > 0.2 {
        data.add("numeric_word_share", st.numeric_share, st.numeric_share);
    }
    if st.json {
        data.add("json_document", 1.0, 1.0);
    }
    out.push((DocType::Data, data));

    // Conversation: mail headers, chat lines.
    let mut chat = Score::default();
    if st.header_lines >= 2 {
        chat.add("mail_header_lines", st.header_lines as f64, (0.4 + st.header_lines as f64 * 0.05).min(0.9));
    }
    if st.chat_share > 0.2 {
        chat.add("chat_line_share", st.chat_share, (st.chat_share * 1.2).min(1.1));
    }
    out.push((DocType::Conversation, chat));

    if let Some(kind) = st.title_kind {
        if let Some((_, score)) = out.iter_mut().find(|(t, _)| *t == kind) {
            score.add("title_names_the_kind", 1.0, 0.3);
        }
    }

    // Too little text to tell anything but the default.
    if st.words < 20 {
        for (t, score) in &mut out {
            if *t != DocType::Prose && *t != DocType::SourceCode && *t != DocType::Data {
                score.signals.iter_mut().for_each(|sig| sig.weight *= 0.5);
            }
        }
    }
    out
}

/// The language of the document's prose (code and tables left out): each
/// line of prose votes for its language with its length, so a stray line of
/// identifiers cannot outvote the sentences.
fn language_of(doc: &Document) -> Option<Language> {
    let found = blocks(&doc.text);
    let mut next_block = 0;
    let mut pos = 0;
    let mut sampled = 0;
    let mut votes: Vec<(whatlang::Lang, f64, usize, usize)> = Vec::new(); // (lang, weight, reliable, lines)
    for line in doc.text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        while next_block < found.len() && found[next_block].end <= start {
            next_block += 1;
        }
        if next_block < found.len() && found[next_block].start <= start {
            continue;
        }
        let t = line.trim();
        // Sentences, not identifiers: at least six words.
        if looks_like_code(t) || is_table_row(t) || t.split_whitespace().count() < 6 {
            continue;
        }
        if let Some(info) = whatlang::detect(t) {
            let weight = t.len() as f64 * info.confidence();
            match votes.iter_mut().find(|v| v.0 == info.lang()) {
                Some(v) => {
                    v.1 += weight;
                    v.2 += info.is_reliable() as usize;
                    v.3 += 1;
                }
                None => votes.push((info.lang(), weight, info.is_reliable() as usize, 1)),
            }
        }
        sampled += t.len();
        if sampled >= LANGUAGE_SAMPLE_CHARS {
            break;
        }
    }
    let total: f64 = votes.iter().map(|v| v.1).sum();
    // Ties go to the language seen first.
    let best = votes.iter().fold(None::<&(whatlang::Lang, f64, usize, usize)>, |best, v| match best {
        Some(b) if b.1 >= v.1 => Some(b),
        _ => Some(v),
    });
    if let Some(&(lang, weight, reliable, lines)) = best.filter(|_| sampled >= 200) {
        return Some(Language {
            code: lang.code().to_string(),
            name: lang.eng_name().to_string(),
            confidence: round(weight / total),
            reliable: reliable * 2 >= lines && weight / total > 0.5,
        });
    }
    // Little prose outside code and tables (a JSON file, a short page):
    // the beginning of the whole text, then.
    let sample: String = doc.text.chars().take(LANGUAGE_SAMPLE_CHARS).collect();
    if sample.split_whitespace().count() < 8 {
        return None;
    }
    let info = whatlang::detect(&sample)?;
    Some(Language {
        code: info.lang().code().to_string(),
        name: info.lang().eng_name().to_string(),
        confidence: round(info.confidence()),
        reliable: info.is_reliable(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafactory_core::{Format, Section};

    fn text_doc(text: &str) -> Document {
        Document {
            title: String::new(),
            format: Format::Text,
            text: text.to_string(),
            sections: vec![Section { heading_path: vec![], start: 0, end: text.chars().count(), page: None }],
            metadata: Default::default(),
            external_id: None,
        }
    }

    #[test]
    fn types_of_small_texts() {
        let contract =
            "This Agreement is entered into by the parties. The Licensee shall indemnify the Licensor \
            against any liability arising from a breach of this Agreement. Notwithstanding the foregoing, \
            the obligations of each party hereunder shall survive termination. This Agreement is governed \
            by the laws of the jurisdiction named herein.";
        assert_eq!(analyze(&text_doc(contract)).doc_type, DocType::Legal);
        let mail = "From: Ann <ann@example.com>\nTo: Bob <bob@example.com>\nSubject: Lunch\nDate: Mon, 3 Feb 2025\n\n\
            Hi Bob, are we still on for lunch tomorrow? Let me know what time suits you best.\n\nAnn";
        assert_eq!(analyze(&text_doc(mail)).doc_type, DocType::Conversation);
        let chat =
            "[09:12] ann: the build is red again\n[09:13] bob: which job?\n[09:13] ann: the nightly one, \
            tests time out\n[09:15] bob: I'll look after standup\n[09:16] ann: thanks!\n";
        let a = analyze(&text_doc(chat));
        assert_eq!(a.doc_type, DocType::Conversation, "{a:#?}");
        let dialogue = "Ann: Did you see the report?\nBob: Not yet, is it long?\nAnn: Forty pages.\n\
            Bob: I will read it tonight.\nAnn: Thanks, tell me what you think.\nBob: Sure.\n";
        assert_eq!(analyze(&text_doc(dialogue)).doc_type, DocType::Conversation);
        let paper = "Abstract\n\nWe propose a method for boundary-layer transition. Results of experiments \
            show a significant improvement over the baseline [1], as in earlier work (Smith et al., 2019) [2].\n\n\
            1. Introduction\n\nPrevious literature [3, 4] studied the hypothesis empirically.\n\nReferences\n\n\
            [1] A. Smith. Journal of Fluids, 2019.\n";
        assert_eq!(analyze(&text_doc(paper)).doc_type, DocType::Academic);
        let csv = (0..30).map(|i| format!("{i},item {i},{}.5,yes", i * 3)).collect::<Vec<_>>().join("\n");
        let a = analyze(&text_doc(&csv));
        assert_eq!(a.doc_type, DocType::Data, "{a:#?}");
        assert_eq!(a.plan.strategy, ChunkStrategy::Lines);
        let code = "use std::io;\n\nfn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n\npub struct A {\n    b: u32,\n}\n";
        let a = analyze(&text_doc(code));
        assert_eq!(a.doc_type, DocType::SourceCode, "{a:#?}");
        assert!(a.signals[0].name == "code_share");
    }

    #[test]
    fn slides_are_short_pages() {
        let pages = [
            "Quarterly review\nSales team\nMarch 2025",
            "Agenda\n• Results\n• Pipeline\n• Hiring",
            "Results\n• Revenue up 12%\n• Churn down to 3%",
            "Pipeline\n• 40 open deals\n• 6 in negotiation",
            "Hiring\n• Two account executives\n• One engineer",
        ];
        let mut text = String::new();
        let mut sections = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            let start = text.chars().count();
            text.push_str(p);
            sections.push(Section {
                heading_path: vec![],
                start,
                end: text.chars().count(),
                page: Some(i as u32 + 1),
            });
            text.push_str("\n\n");
        }
        let doc = Document {
            title: "Quarterly review".into(),
            format: Format::Pdf,
            text,
            sections,
            metadata: Default::default(),
            external_id: None,
        };
        let a = analyze(&doc);
        assert_eq!(a.doc_type, DocType::Slides, "{a:#?}");
        assert_eq!(a.structure.pages, 5);
        assert!(a.plan.max_tokens <= 256);
    }

    #[test]
    fn language_and_determinism() {
        let de = "Die Stadt liegt am Ufer des Flusses und hat eine lange Geschichte. Im Mittelalter war sie \
            ein wichtiger Handelsplatz, und viele Kaufleute kamen aus dem ganzen Land hierher.";
        let a = analyze(&text_doc(de));
        assert_eq!(a.language.as_ref().map(|l| l.code.as_str()), Some("deu"));
        assert_eq!(a.doc_type, DocType::Prose);
        assert_eq!(a, analyze(&text_doc(de)));
        assert!(analyze(&text_doc("ok")).language.is_none());
    }
}

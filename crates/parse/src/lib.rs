//! Format sniffing and parsers that turn input files into DataFactory
//! [`Document`]s.
//!
//! Entry points: [`sniff`] tells which [`Format`] some bytes are, [`parse`]
//! turns them into documents (one per file, or one per record for JSONL).
//!
//! Every parser produces a `text` and sections whose offsets are **character**
//! offsets into that text (see `datafactory_core::document`). Sections are
//! ordered, do not overlap, lie within the text and are never empty.
//!
//! No input makes these functions panic: errors come back as [`ParseError`]s
//! whose messages are meant to be shown to a user as they are.

use std::path::Path;
use std::time::Duration;

use datafactory_core::config::IngestConfig;
use datafactory_core::document::{char_to_byte_offsets, Document, Format, Section};
use serde::{Deserialize, Serialize};

mod docx;
mod html;
mod jsonl;
mod markdown;
mod pdf;
mod sniff;
mod text;
pub mod worker;

/// Version of the parsers' output. Bump it whenever the documents produced for
/// the same input change (text, sections, titles), so that stored documents
/// can be re-parsed.
pub const PARSER_VERSION: &str = "1";

/// Default for [`ParseOptions::max_decompressed_bytes`]: 256 MiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;
/// Default for [`ParseOptions::max_nesting`].
pub const DEFAULT_MAX_NESTING: usize = 512;
/// Default for [`ParseOptions::timeout`], in seconds.
pub const DEFAULT_PARSE_TIMEOUT_SECONDS: u64 = 120;
/// Default for [`ParseOptions::memory_mb`].
pub const DEFAULT_PARSE_MEMORY_MB: u64 = 2048;

/// Which formats are parsed in a child process ([`worker`]), where a memory
/// limit (RLIMIT_AS) and a wall-clock timeout bound them
/// (`ingest.parse_isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything in this process (bounded by decompression and nesting limits only).
    None,
    /// PDF in a child process: its reader (lopdf) cannot be bounded in-process.
    #[default]
    Pdf,
    /// Every format in a child process.
    All,
}

impl Isolation {
    /// `none`, `pdf` or `all`.
    pub fn from_name(name: &str) -> Option<Isolation> {
        match name {
            "none" => Some(Isolation::None),
            "pdf" => Some(Isolation::Pdf),
            "all" => Some(Isolation::All),
            _ => None,
        }
    }

    /// Whether `format` goes through the child process.
    pub fn covers(self, format: Format) -> bool {
        match self {
            Isolation::None => false,
            Isolation::Pdf => format == Format::Pdf,
            Isolation::All => true,
        }
    }
}

/// Knobs for [`parse`]: the bounds every parse of an untrusted file runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// The most bytes a compressed container (DOCX, the streams of a PDF) may
    /// decompress to, in total over the parts that are read
    /// (`ingest.max_decompressed_bytes`).
    pub max_decompressed_bytes: u64,
    /// The deepest nesting of elements (HTML) or containers (Markdown block
    /// quotes and lists) accepted (`ingest.max_nesting`).
    pub max_nesting: usize,
    /// Wall-clock limit of a parse in the child process (`ingest.parse_timeout_seconds`).
    pub timeout: Duration,
    /// Address-space limit of the child process, MiB (`ingest.parse_memory_mb`).
    pub memory_mb: u64,
    /// Which formats go through the child process (`ingest.parse_isolation`).
    pub isolation: Isolation,
    /// The child process's program; `None`: the one registered with
    /// [`worker::register`] (the `datafactory` binary registers itself), and
    /// where none is, the parse runs in this process.
    pub worker: Option<worker::WorkerCommand>,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_nesting: DEFAULT_MAX_NESTING,
            timeout: Duration::from_secs(DEFAULT_PARSE_TIMEOUT_SECONDS),
            memory_mb: DEFAULT_PARSE_MEMORY_MB,
            isolation: Isolation::default(),
            worker: None,
        }
    }
}

impl ParseOptions {
    /// The options named by the `[ingest]` section of the configuration.
    pub fn from_config(ingest: &IngestConfig) -> ParseOptions {
        ParseOptions {
            max_decompressed_bytes: ingest.max_decompressed_bytes,
            max_nesting: ingest.max_nesting,
            timeout: Duration::from_secs(ingest.parse_timeout_seconds),
            memory_mb: ingest.parse_memory_mb,
            isolation: Isolation::from_name(&ingest.parse_isolation).unwrap_or_default(),
            worker: (!ingest.parse_worker.as_os_str().is_empty())
                .then(|| worker::WorkerCommand { program: ingest.parse_worker.clone(), args: Vec::new() }),
        }
    }
}

/// What [`parse`] got out of one input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Parsed {
    /// The documents: one for most formats, one per good record for JSONL.
    pub documents: Vec<Document>,
    /// Records that could not be parsed (JSONL lines); the others still are.
    pub failures: Vec<RecordFailure>,
    /// Things worth telling the user that did not stop the parse, e.g. that
    /// invalid UTF-8 was decoded lossily.
    pub warnings: Vec<String>,
}

/// One record of a multi-record input (a JSONL line) that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFailure {
    /// Where the record is, e.g. `"line 12"`.
    pub location: String,
    /// What is wrong with it.
    pub error: String,
}

/// Why an input could not be parsed. The messages are written for users.
/// (Serialisable: the child process sends it back to the parent.)
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum ParseError {
    /// The input has no bytes, or only whitespace.
    #[error("file is empty")]
    Empty,
    /// The input is not a text document of any supported format.
    #[error("binary content (not a document): {detail}")]
    Binary { detail: String },
    /// The document is password-protected.
    #[error("{} is encrypted (password-protected); decrypt it first", format_label(*format))]
    Encrypted { format: Format },
    /// The document is damaged or cut short.
    #[error("corrupt or truncated {}: {detail}", format_label(*format))]
    Corrupt { format: Format, detail: String },
    /// A compressed container decompresses to more than the configured limit.
    #[error(
        "{} decompresses to more than {limit} bytes (limit ingest.max_decompressed_bytes)",
        format_label(*format)
    )]
    TooLarge { format: Format, limit: u64 },
    /// Elements or containers nest deeper than the configured limit.
    #[error("{} nests more than {limit} levels deep (limit ingest.max_nesting)", format_label(*format))]
    TooDeep { format: Format, limit: usize },
    /// The parse in the child process ran past its wall-clock limit.
    #[error("parsing timed out after {seconds} s (limit ingest.parse_timeout_seconds)")]
    Timeout { seconds: u64 },
    /// The parse in the child process ran out of its address space.
    #[error("parsing exceeded the {mb} MB memory limit (ingest.parse_memory_mb)")]
    OutOfMemory { mb: u64 },
    /// The child process could not be started or ended without an answer.
    #[error("the parse worker failed: {detail}")]
    Worker { detail: String },
    /// A format DataFactory does not read; `reason` says which and what to do.
    #[error("{reason}")]
    Unsupported { reason: String },
    /// The document parsed but has no text (e.g. a PDF of scanned images).
    #[error("no extractable text{}", if *format == Format::Pdf { " (scanned PDF?)" } else { "" })]
    NoText { format: Format },
}

/// How formats are named in messages ("PDF", "DOCX", ...).
pub fn format_label(format: Format) -> &'static str {
    match format {
        Format::Text => "text file",
        Format::Markdown => "Markdown",
        Format::Html => "HTML",
        Format::Pdf => "PDF",
        Format::Docx => "DOCX",
        Format::Jsonl => "JSONL",
    }
}

/// Tells the format of `bytes`: from content first, from the extension of
/// `path_hint` second. Fails for empty, binary and unsupported inputs.
pub fn sniff(bytes: &[u8], path_hint: Option<&Path>) -> Result<Format, ParseError> {
    sniff::sniff(bytes, path_hint)
}

/// Parses `bytes` (the whole file) into documents. `path_hint` is used for
/// format detection and as a fallback title (its file stem).
///
/// Formats that [`ParseOptions::isolation`] covers are parsed in a child
/// process (see [`worker`]) when a worker program is known, so that a file
/// that exhausts memory or time costs that file only.
pub fn parse(bytes: &[u8], path_hint: Option<&Path>, opts: &ParseOptions) -> Result<Parsed, ParseError> {
    let format = sniff::sniff(bytes, path_hint)?;
    if opts.isolation.covers(format) {
        if let Some(command) = opts.worker.clone().or_else(worker::registered) {
            return worker::parse_in_child(&command, bytes, path_hint, opts);
        }
    }
    parse_format(bytes, path_hint, format, opts)
}

/// [`parse`] in this process, whatever [`ParseOptions::isolation`] says (the
/// child process's own entry point).
pub fn parse_in_process(
    bytes: &[u8],
    path_hint: Option<&Path>,
    opts: &ParseOptions,
) -> Result<Parsed, ParseError> {
    let format = sniff::sniff(bytes, path_hint)?;
    parse_format(bytes, path_hint, format, opts)
}

fn parse_format(
    bytes: &[u8],
    path_hint: Option<&Path>,
    format: Format,
    opts: &ParseOptions,
) -> Result<Parsed, ParseError> {
    tracing::debug!(format = format.as_str(), len = bytes.len(), "parsing");
    match format {
        Format::Pdf => single(pdf::parse(bytes, path_hint, opts)?, Vec::new()),
        Format::Docx => single(docx::parse(bytes, path_hint, opts)?, Vec::new()),
        Format::Text | Format::Markdown | Format::Html | Format::Jsonl => {
            let decoded = text::decode(bytes);
            if decoded.text.trim().is_empty() {
                return Err(ParseError::Empty);
            }
            let warnings = decoded.warnings;
            match format {
                Format::Text => single(text::parse(decoded.text, path_hint)?, warnings),
                Format::Markdown => {
                    single(markdown::parse(decoded.text, path_hint, opts.max_nesting)?, warnings)
                }
                Format::Html => single(html::parse(&decoded.text, path_hint, opts.max_nesting)?, warnings),
                _ => {
                    let mut parsed = jsonl::parse(&decoded.text, opts.max_nesting);
                    let mut all = warnings;
                    all.append(&mut parsed.warnings);
                    parsed.warnings = all;
                    Ok(parsed)
                }
            }
        }
    }
}

fn single(document: Document, warnings: Vec<String>) -> Result<Parsed, ParseError> {
    Ok(Parsed { documents: vec![document], failures: Vec::new(), warnings })
}

// ---------------------------------------------------------------------------
// Helpers shared by the parsers.

/// Longest title kept, in characters.
pub(crate) const MAX_TITLE_CHARS: usize = 200;
/// Longest first line that is taken as a title, in characters.
pub(crate) const MAX_LINE_TITLE_CHARS: usize = 120;

/// The title used when a document has none: the file stem, else "Untitled".
pub(crate) fn fallback_title(path_hint: Option<&Path>) -> String {
    path_hint
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().trim().to_string())
        .filter(|s| !s.is_empty())
        .map(|s| clip_title(&s))
        .unwrap_or_else(|| "Untitled".to_string())
}

/// Collapses whitespace and clips to [`MAX_TITLE_CHARS`] characters.
pub(crate) fn clip_title(s: &str) -> String {
    let collapsed = collapse_whitespace(s);
    if collapsed.chars().count() <= MAX_TITLE_CHARS {
        collapsed
    } else {
        let clipped: String = collapsed.chars().take(MAX_TITLE_CHARS - 1).collect();
        format!("{}…", clipped.trim_end())
    }
}

/// Runs of whitespace become one space; the ends are trimmed.
pub(crate) fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first non-empty line (trimmed) if it is short enough to be a title.
pub(crate) fn first_line_title(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.chars().count() <= MAX_LINE_TITLE_CHARS {
        Some(clip_title(line))
    } else {
        None
    }
}

/// A heading found in a document's text, in character offsets.
#[derive(Debug, Clone)]
pub(crate) struct HeadingMark {
    /// 1 = outermost.
    pub level: u32,
    pub title: String,
    /// Where the heading's own text starts and ends in the document text.
    pub start: usize,
    pub end: usize,
}

/// Cuts `body_start..body_end` into sections at the given headings (ordered,
/// inside the body). Text before the first heading gets an empty heading path.
/// The sections may still be empty or have untrimmed ends: [`finish`] tidies.
pub(crate) fn sections_from_headings(
    body_start: usize,
    body_end: usize,
    headings: &[HeadingMark],
) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut stack: Vec<(u32, String)> = Vec::new();
    let mut cursor = body_start;
    for h in headings {
        if h.start < cursor || h.end > body_end || h.start > h.end {
            continue; // out of order or outside the body: not a boundary
        }
        sections.push(Section {
            heading_path: stack.iter().map(|(_, t)| t.clone()).collect(),
            start: cursor,
            end: h.start,
            page: None,
        });
        while stack.last().is_some_and(|(level, _)| *level >= h.level) {
            stack.pop();
        }
        stack.push((h.level, h.title.clone()));
        cursor = h.end;
    }
    sections.push(Section {
        heading_path: stack.into_iter().map(|(_, t)| t).collect(),
        start: cursor,
        end: body_end.max(cursor),
        page: None,
    });
    sections
}

/// Character offsets of the given byte offsets (which must be ascending and
/// on character boundaries; others are counted as the next boundary).
pub(crate) fn byte_to_char_offsets(text: &str, bytes: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut it = text.char_indices().peekable();
    let mut ci = 0usize;
    for &b in bytes {
        if out.last().is_some_and(|_| it.peek().is_some_and(|&(pos, _)| pos > b)) {
            // Not ascending: count from the start (never happens in practice).
            out.push(text.char_indices().take_while(|&(pos, _)| pos < b).count());
            continue;
        }
        while it.peek().is_some_and(|&(pos, _)| pos < b) {
            it.next();
            ci += 1;
        }
        out.push(ci);
    }
    out
}

/// Finishes a document: checks that it has text, trims whitespace off the
/// ends of sections, drops empty, overlapping or out-of-range sections, and
/// gives a document with text but no sections one section over all of it.
pub(crate) fn finish(mut doc: Document) -> Result<Document, ParseError> {
    // U+0000 can come from a wide encoding or a JSON escape; no store takes it
    // (PostgreSQL refuses it in text). A space keeps every offset.
    for s in [&mut doc.text, &mut doc.title] {
        if s.contains('\0') {
            *s = s.replace('\0', " ");
        }
    }
    if doc.text.trim().is_empty() {
        return Err(ParseError::NoText { format: doc.format });
    }
    let char_len = doc.char_len();
    let mut bounds = Vec::with_capacity(doc.sections.len() * 2);
    for s in &doc.sections {
        bounds.push(s.start.min(char_len));
        bounds.push(s.end.min(char_len));
    }
    let mut sorted = bounds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let sorted_bytes = char_to_byte_offsets(&doc.text, &sorted);
    let to_byte = |c: usize| sorted_bytes[sorted.binary_search(&c).unwrap_or(0)];

    let mut kept = Vec::with_capacity(doc.sections.len());
    let mut prev_end = 0usize;
    for (i, s) in doc.sections.iter().enumerate() {
        let (start, end) = (bounds[2 * i], bounds[2 * i + 1]);
        if start >= end || start < prev_end {
            continue;
        }
        let body = &doc.text[to_byte(start)..to_byte(end)];
        let trimmed_start = body.trim_start();
        let lead = body[..body.len() - trimmed_start.len()].chars().count();
        let trimmed = trimmed_start.trim_end();
        if trimmed.is_empty() {
            continue;
        }
        let trail = trimmed_start[trimmed.len()..].chars().count();
        let section = Section {
            heading_path: s.heading_path.clone(),
            start: start + lead,
            end: end - trail,
            page: s.page,
        };
        prev_end = section.end;
        kept.push(section);
    }
    if kept.is_empty() {
        let lead = doc.text.len() - doc.text.trim_start().len();
        let lead_chars = doc.text[..lead].chars().count();
        let trail_chars = doc.text[doc.text.trim_end().len()..].chars().count();
        kept.push(Section {
            heading_path: Vec::new(),
            start: lead_chars,
            end: char_len - trail_chars,
            page: None,
        });
    }
    doc.sections = kept;
    if doc.title.trim().is_empty() {
        doc.title = "Untitled".to_string();
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str, sections: Vec<(usize, usize)>) -> Document {
        Document {
            title: "t".into(),
            format: Format::Text,
            text: text.into(),
            sections: sections
                .into_iter()
                .map(|(start, end)| Section { heading_path: vec![], start, end, page: None })
                .collect(),
            metadata: Default::default(),
            external_id: None,
        }
    }

    #[test]
    fn finish_trims_and_drops_sections() {
        let d = finish(doc("  héllo  \n\n   \n wörld ", vec![(0, 9), (9, 15), (15, 23)])).unwrap();
        let spans: Vec<_> = d.sections.iter().map(|s| d.section_text(s)).collect();
        assert_eq!(spans, vec!["héllo", "wörld"]);
    }

    #[test]
    fn finish_adds_a_section_when_none_is_left() {
        let d = finish(doc("\n# Only a heading\n", vec![])).unwrap();
        assert_eq!(d.sections.len(), 1);
        assert_eq!(d.section_text(&d.sections[0]), "# Only a heading");
    }

    #[test]
    fn finish_turns_nul_into_space() {
        let mut d = doc("a\0b\0\0 wörld", vec![(0, 11)]);
        d.title = "t\0t".into();
        let d = finish(d).unwrap();
        assert_eq!(d.text, "a b   wörld");
        assert_eq!(d.title, "t t");
        assert_eq!(d.section_text(&d.sections[0]), "a b   wörld");
        assert!(matches!(finish(doc("\0\0", vec![])), Err(ParseError::NoText { .. })));
    }

    #[test]
    fn finish_rejects_empty_text() {
        assert!(matches!(finish(doc(" \n ", vec![])), Err(ParseError::NoText { .. })));
    }

    #[test]
    fn finish_drops_overlaps_and_clamps() {
        let d = finish(doc("abcdef", vec![(0, 4), (2, 5), (4, 100)])).unwrap();
        let spans: Vec<_> = d.sections.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(spans, vec![(0, 4), (4, 6)]);
    }

    #[test]
    fn heading_paths_nest_by_level() {
        let h = |level, title: &str, start, end| HeadingMark { level, title: title.into(), start, end };
        let s = sections_from_headings(
            0,
            100,
            &[h(1, "A", 5, 10), h(2, "B", 20, 25), h(3, "C", 30, 35), h(2, "D", 40, 45)],
        );
        let paths: Vec<_> = s.iter().map(|s| s.heading_path.join("/")).collect();
        assert_eq!(paths, vec!["", "A", "A/B", "A/B/C", "A/D"]);
        assert_eq!((s[0].start, s[0].end), (0, 5));
        assert_eq!((s[4].start, s[4].end), (45, 100));
    }

    #[test]
    fn char_offsets_map_to_bytes() {
        let t = "aé€b";
        assert_eq!(char_to_byte_offsets(t, &[0, 1, 2, 3, 4, 9]), vec![0, 1, 3, 6, 7, 7]);
    }

    #[test]
    fn byte_offsets_map_to_chars() {
        let t = "aé€b";
        assert_eq!(byte_to_char_offsets(t, &[0, 1, 3, 6, 7, 99]), vec![0, 1, 2, 3, 4, 4]);
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(ParseError::Empty.to_string(), "file is empty");
        assert_eq!(
            ParseError::Encrypted { format: Format::Pdf }.to_string(),
            "PDF is encrypted (password-protected); decrypt it first"
        );
        assert_eq!(
            ParseError::TooLarge { format: Format::Docx, limit: 10 }.to_string(),
            "DOCX decompresses to more than 10 bytes (limit ingest.max_decompressed_bytes)"
        );
        assert_eq!(
            ParseError::NoText { format: Format::Pdf }.to_string(),
            "no extractable text (scanned PDF?)"
        );
        assert!(ParseError::Corrupt { format: Format::Pdf, detail: "x".into() }
            .to_string()
            .starts_with("corrupt or truncated PDF: "));
    }
}
